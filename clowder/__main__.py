from clowder.cli import main

main()
