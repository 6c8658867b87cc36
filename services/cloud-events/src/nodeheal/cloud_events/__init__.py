"""nodeheal cloud_events service."""
