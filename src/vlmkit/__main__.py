from vlmkit.cli import main

main()
