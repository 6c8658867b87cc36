"""`python -m nodeheal.agent` as its own process, configured only by environment
variables, against a fake node root and a real nats-server; it stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.subjects import probe_subject
from nodeheal.sim.embedded import free_port
from tests.unit.cloud_events.agent_fakenode import make_fake_node

pytestmark = pytest.mark.nats


async def test_agent_process_publishes_and_stops(topology_ready: NatsSettings, nc: Client, tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "active")
    env = {
        **os.environ,
        "NODEHEAL_AGENT_NATS__URL": topology_ready.url,
        "NODEHEAL_AGENT_NATS__PREFIX": topology_ready.prefix,
        "NODEHEAL_AGENT_NATS__STREAM_PREFIX": topology_ready.stream_prefix,
        "NODEHEAL_AGENT_NATS__BUCKET_PREFIX": topology_ready.bucket_prefix,
        "NODEHEAL_AGENT_CLUSTER": "prod-1",
        "NODEHEAL_AGENT_NODE_NAME": "node-7",
        "NODEHEAL_AGENT_HOST_ROOT": str(node.root),
        "NODEHEAL_AGENT_SERVICES": json.dumps(["kubelet"]),
        "NODEHEAL_AGENT_SYSTEMCTL_COMMAND": json.dumps([node.systemctl]),
        "NODEHEAL_AGENT_INTERVAL_S": "0.5",
        "NODEHEAL_AGENT_HTTP_PORT": str(free_port()),
        "NODEHEAL_AGENT_HTTP_HOST": "127.0.0.1",
        "NODEHEAL_AGENT_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodeheal.agent", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        sub = await nc.jetstream().pull_subscribe(
            probe_subject("prod-1", "node-7", prefix=topology_ready.prefix),
            durable=None,
            stream=f"{topology_ready.stream_prefix}PROBES",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        [msg] = await sub.fetch(1, timeout=30)
        probe = NodeProbe.model_validate_json(msg.data)
        assert probe.node == "node-7" and probe.cpu_count == 64
        assert [(s.name, s.state) for s in probe.services] == [("kubelet", "active")]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, stderr.decode()[-2000:]
