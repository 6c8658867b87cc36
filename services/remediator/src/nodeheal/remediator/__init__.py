"""nodeheal remediator service."""
