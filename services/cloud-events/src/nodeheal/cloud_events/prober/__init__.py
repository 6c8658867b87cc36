"""The active prober: checks every node of the inventory from outside (TCP connect, SSH banner,
kubelet healthz), because a dead node sends nothing. `checks` and `sharding` are plain Python with
no NATS in them; `app` reads the inventory bucket and publishes `NodeProbe`s."""
