"""The `djz` command line."""
