"""nodeheal diagnoser service."""
