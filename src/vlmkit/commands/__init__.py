"""The CLI's commands, one module per verb (`vlmkit.cli` registers them)."""
