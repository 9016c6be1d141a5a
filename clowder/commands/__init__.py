"""The command line's commands, one module per kind of work; clowder.cli assembles them."""
