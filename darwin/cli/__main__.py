from darwin.cli.app import main

main()
