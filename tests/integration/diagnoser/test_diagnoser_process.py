"""`python -m nodeheal.diagnoser` as the demo launches it: env-configured, its own process, /healthz and
/readyz answer, an anomaly published into ANOMALIES comes out as a diagnosis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from nodeheal.runtime.jetstream import publish_model
from nodeheal.schemas import Diagnosis
from nodeheal.schemas.subjects import anomaly_subject, diagnosis_subject
from nodeheal.sim.embedded import free_port
from tests.integration.deploy.natsauth_loader import RoleServer, violations
from tests.support.http import status
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly

pytestmark = pytest.mark.nats


async def test_service_process_diagnoses_from_env_configuration(deployed: RoleServer) -> None:
    nc, topology_ready = deployed.nc, deployed.settings  # the test stands in for the detector, as admin
    role = deployed.role  # the process is configured as deployed: its role's credential and inbox prefix
    assert role.creds_file is not None
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEHEAL_")} | {
        "NODEHEAL_DIAGNOSER_NATS__CREDS_FILE": role.creds_file,
        "NODEHEAL_DIAGNOSER_NATS__INBOX_PREFIX": role.inbox_prefix,
        "NODEHEAL_DIAGNOSER_NATS__URL": topology_ready.url,
        "NODEHEAL_DIAGNOSER_NATS__PREFIX": topology_ready.prefix,
        "NODEHEAL_DIAGNOSER_NATS__STREAM_PREFIX": topology_ready.stream_prefix,
        "NODEHEAL_DIAGNOSER_NATS__BUCKET_PREFIX": topology_ready.bucket_prefix,
        "NODEHEAL_DIAGNOSER_CLUSTER": CLUSTER,
        "NODEHEAL_DIAGNOSER_HTTP_PORT": str(port),
        "NODEHEAL_DIAGNOSER_HTTP_HOST": "127.0.0.1",
        "NODEHEAL_DIAGNOSER_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen([sys.executable, "-m", "nodeheal.diagnoser"], env=env, stderr=subprocess.PIPE)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
            assert loop.time() < deadline, "diagnoser never became ready"
            await asyncio.sleep(0.2)
        assert status(f"http://127.0.0.1:{port}/healthz") == 200
        js = nc.jetstream()
        item = anomaly("solo", "service_down", subject="containerd")
        await publish_model(js, anomaly_subject(CLUSTER, "solo", prefix=topology_ready.prefix), item, msg_id=item.id)
        sub = await js.subscribe(
            diagnosis_subject(CLUSTER, "solo", prefix=topology_ready.prefix),
            stream=f"{topology_ready.stream_prefix}DIAGNOSES",
            ordered_consumer=True,
        )
        msg = await sub.next_msg(timeout=30)
        diagnosis = Diagnosis.model_validate_json(msg.data)
        assert diagnosis.cause == "container_runtime_down"
        assert diagnosis.recommended[0].action == "restart_service"
        await sub.unsubscribe()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert violations(deployed.dir) == []
