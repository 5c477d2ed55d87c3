from ds4d_cli.cli import main

main()
