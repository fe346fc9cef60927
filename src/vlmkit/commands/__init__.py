"""The `vlmkit` commands, one module per verb: each parses its options (typed option groups, `options.py`),
calls the library and prints. `vlmkit.cli` registers them on the app."""
