"""The inventory watcher: lists and watches Kubernetes Nodes (official client) and keeps the
`nodeheal-inventory` bucket current (`node.<cluster>.<node>` → `NodeInventory`, and
`claim.<instance id>.<cluster>` → this cluster's claimant, `instance.<instance id>` → the claimant chosen
across every cluster's claims). `mapping` is pure; `watcher` talks to Kubernetes;
`store` writes the bucket."""
