"""The cloud-event ingest service: HTTP endpoints for push channels, pollers for pull channels,
instance → node mapping from the inventory, publish to CLOUD with deterministic message ids."""
