"""The node agent: a DaemonSet process that reads the node's own state (load, file systems, file
handles, systemd services, kernel log, boot id) into `NodeProbe`s and executes node-local repair
commands. Host access goes through modules with no NATS in them (`host`, `kmsg`, `systemd`,
`commands`); only `app` talks to NATS."""
