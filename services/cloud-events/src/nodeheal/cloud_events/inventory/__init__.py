"""The inventory watcher: lists and watches Kubernetes Nodes (official client) and keeps the
`nodeheal-inventory` bucket current (`node.<cluster>.<node>` → `NodeInventory`, and
`instance.<instance id>` → the same record). `mapping` is pure; `watcher` talks to Kubernetes;
`store` writes the bucket."""
