"""The `nodeheal` command line."""
