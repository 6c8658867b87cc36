"""A ladder stopped by a stream that does not answer says so in one line, and runs when the stream is back.

Seen in a `nodeheal demo --nats-cluster 3 --chaos` run: the server that led the leases bucket was SIGKILLed, and
every ladder that took a lease before another leader was elected logged `ladder crashed` at ERROR with a
30-line traceback of nats-py's `NoStreamResponseError`, though nothing had crashed: the diagnosis was redelivered
and its ladder ran. A passing NATS error (the runtime's `TRANSIENT`) is now a warning naming the error; anything
else keeps the traceback.

As deployed: the per-role server, the remediator under its role's credential. The leases bucket is deleted under
the running service (no stream answers a lease's write, as between two leaders) and made again by
`apply_topology` under `admin`, as `nodeheal streams apply` would; so is the AUDIT stream."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nodeheal.runtime.provision import apply_topology
from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import per_role_server, role_nats, violations
from tests.integration.remediator.harness import (
    diagnosis,
    make_settings,
    publish_diagnosis,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats


@pytest.mark.parametrize(("gone", "error"), [("leases", "NoStreamResponseError"), ("AUDIT", "AuditUnavailableError")])
async def test_a_ladder_stopped_by_a_stream_without_answer_says_one_line_and_runs_when_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, gone: str, error: str
) -> None:
    """`leases`: a lease's write (nats-py's `NoStreamResponseError`); `AUDIT`: the `skipped` record of a diagnosis
    not acted on (another cluster's) that AUDIT did not acknowledge (`AuditUnavailableError`, seen when AUDIT's
    leader was killed in the next chaos run; a step's own records already said `no audit, no action` in a line)."""
    name = "n-transient"
    async with per_role_server(tmp_path, "remediator") as (server, nc, admin):
        remediator = role_nats(tmp_path, server.url, "remediator")
        async with KubeWorld() as world:
            world.add_node(name, zone="z1")
            service = await start_service(make_settings(remediator, kube_url=world.url))
            try:
                js = nc.jetstream()
                if gone == "leases":
                    await js.delete_key_value(f"{admin.bucket_prefix}-leases")
                else:
                    await js.delete_stream(f"{admin.stream_prefix}AUDIT")
                d = diagnosis(name, ["escalate"])
                if gone == "AUDIT":  # a diagnosis of another cluster: skipped, the skip recorded in AUDIT
                    d = d.model_copy(update={"cluster": "elsewhere"})
                with caplog.at_level(logging.WARNING, logger="nodeheal.remediator.handlers"):
                    await publish_diagnosis(nc, admin, d)

                    async def said() -> bool:
                        return any("passing NATS error" in r.getMessage() for r in caplog.records)

                    await wait_for(said, timeout=20, what="the ladder's warning")
                    await apply_topology(js, admin.topology())  # the bucket (or stream) made again
                    done = {"action": "escalate", "phase": "succeeded"} if gone == "leases" else {"phase": "skipped"}
                    await wait_for_record(nc, admin, diagnosis_id=d.id, timeout=60, **done)
            finally:
                await service.stop()
    warned = [r for r in caplog.records if "passing NATS error" in r.getMessage()]
    assert warned and all(r.levelno == logging.WARNING and r.exc_info is None for r in warned)
    assert error in getattr(warned[0], "error", "")
    assert [r for r in caplog.records if "ladder crashed" in r.getMessage()] == []
    assert violations(tmp_path) == []
