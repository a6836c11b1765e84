"""The `rewardloop` command line: main.py holds the subcommand table; one module per kind of user."""
