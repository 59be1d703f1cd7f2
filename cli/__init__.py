"""The `stoker` command line: one console script, a subcommand per role."""
