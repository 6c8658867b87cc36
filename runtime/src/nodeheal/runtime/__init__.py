"""Runtime helpers shared by the nodeheal services and the command line: NATS connections,
stream provisioning, the embedded nats-server, settings, logging. It knows no service."""
