"""The `macula` command line. Nothing imports this package."""
