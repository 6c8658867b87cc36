"""nodeheal detector service."""
