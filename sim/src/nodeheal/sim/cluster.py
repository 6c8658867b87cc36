"""Three (or more) real nats-servers on loopback as one JetStream cluster, for `nodeheal demo --nats-cluster 3`
and the tests: each server has its own client port, route port, monitor port and store; any one of them can
be SIGKILLed and restarted on the same store while the others keep the streams (R3) available.

Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from nodeheal.sim.embedded import EmbeddedNats, free_port


class EmbeddedCluster:
    """`with EmbeddedCluster(3) as cluster: cluster.url` — the comma-joined client URLs of every server."""

    def __init__(
        self, size: int = 3, *, log_dir: str | None = None, name: str = "nodeheal-demo", extra_config: str = ""
    ) -> None:
        """`extra_config`: more server configuration for every server (the demo's NATS authorization)."""
        if size < 3:
            msg = "a JetStream cluster needs at least 3 servers (a quorum survives the loss of one)"
            raise ValueError(msg)
        self.size = size
        self.name = name
        self.base_dir = Path(tempfile.mkdtemp(prefix="nodeheal-cluster-"))
        self.log_dir = Path(log_dir) if log_dir else self.base_dir
        self.route_ports = [free_port() for _ in range(size)]
        self.servers: list[EmbeddedNats] = []
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        for i in range(size):
            store = self.base_dir / f"n{i}" / "store"
            store.mkdir(parents=True)
            conf = self.base_dir / f"n{i}" / "server.conf"
            conf.write_text(
                f'server_name: "{name}-{i}"\n'
                f"cluster {{\n  name: {name}\n  listen: 127.0.0.1:{self.route_ports[i]}\n  routes: [{routes}]\n}}\n"
                + extra_config
            )
            self.servers.append(
                EmbeddedNats(
                    store_dir=str(store),
                    config_file=str(conf),
                    log_file=str(self.log_dir / f"nats-server-{i}.log"),
                    start_timeout_s=30.0,
                )
            )

    @property
    def url(self) -> str:
        return ",".join(s.url for s in self.servers)

    def start(self, *, timeout_s: float = 60.0) -> EmbeddedCluster:
        for server in self.servers:
            server.start()
        self.wait_meta_leader(timeout_s=timeout_s)
        return self

    def wait_meta_leader(self, *, timeout_s: float = 60.0) -> None:
        """Until the JetStream meta group has a leader (streams can be created)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.meta_leader() is not None:
                return
            time.sleep(0.2)
        msg = f"the {self.size}-server JetStream cluster elected no meta leader within {timeout_s:.0f} s"
        raise RuntimeError(msg)

    def _jsz(self, query: str = "") -> Iterator[dict[str, Any]]:
        """`/jsz` (with `query`) of each live server that answers, in order."""
        for server in self.servers:
            if server.pid is None:
                continue
            try:
                url = f"http://127.0.0.1:{server.monitor_port}/jsz{query}"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    answer = json.loads(resp.read())
            except (OSError, ValueError):
                continue
            if isinstance(answer, dict):
                yield answer

    def meta_leader(self) -> str | None:
        """The server name of the JetStream meta leader, as any live server sees it (None: no leader)."""
        for jsz in self._jsz():
            meta = jsz.get("meta_cluster") or {}
            leader = meta.get("leader")
            if isinstance(leader, str) and leader and meta.get("cluster_size", 0) >= self.size:
                return leader
        return None

    def stream_leader(self, stream: str) -> int | None:
        """The index of the server that leads `stream` (in any account), as any live server's monitor sees it;
        None when none says (no leader, or no such stream)."""
        names = {f"{self.name}-{i}": i for i in range(self.size)}
        for jsz in self._jsz("?accounts=true&streams=true"):
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    leader = (detail.get("cluster") or {}).get("leader")
                    if detail.get("name") == stream and leader in names:
                        return names[leader]
        return None

    def kill_leader_of(self, stream: str, *, otherwise: int) -> int:
        """SIGKILL the server that leads `stream` now (`otherwise` when none says); returns its index."""
        leader = self.stream_leader(stream)
        index = otherwise if leader is None else leader
        self.kill(index)
        return index

    def kill(self, index: int) -> None:
        """SIGKILL one server; its store stays for the restart."""
        self.servers[index].kill()

    def restart(self, index: int) -> None:
        """Start a killed server again on the same ports and store."""
        self.servers[index].start()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
