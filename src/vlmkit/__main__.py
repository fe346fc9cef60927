from vlmkit.cli import run

run()
