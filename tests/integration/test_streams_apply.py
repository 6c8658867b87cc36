"""`streams apply` against a real nats-server: limits, deny delete/purge, bucket TTL, idempotency."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext

from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.streams import DAY_S, DLQ_MAX_MSGS, DLQ_MAX_MSGS_PER_SUBJECT, SHARES, reserved_bytes
from tests.integration.deploy.natsauth_loader import per_role_server, violations

pytestmark = pytest.mark.nats


async def test_apply_creates_every_stream_and_bucket_with_design_limits(
    js: JetStreamContext, nats_settings: NatsSettings, cleanup: None
) -> None:
    topo = nats_settings.topology()
    changes = await apply_topology(js, topo)
    assert [c.action for c in changes] == ["created"] * 12

    sp = nats_settings.stream_prefix
    probes = (await js.stream_info(f"{sp}PROBES")).config
    assert probes.subjects == [f"{nats_settings.prefix}.probe.*.*", f"{nats_settings.prefix}.prober.*.*"]
    assert probes.max_age == pytest.approx(3 * DAY_S)
    assert probes.max_bytes == int(nats_settings.store_bytes * SHARES["PROBES"])
    dlq = (await js.stream_info(f"{sp}DLQ")).config
    assert dlq.max_bytes == int(nats_settings.store_bytes * SHARES["DLQ"])
    assert (dlq.max_msgs, dlq.max_msgs_per_subject) == (DLQ_MAX_MSGS, DLQ_MAX_MSGS_PER_SUBJECT)
    assert dlq.discard == "old"  # a full DLQ drops its oldest letters, it never refuses new ones
    # every stream and bucket has its own cap, and together they fit the store they were sized for
    for spec in topo.streams:
        assert (await js.stream_info(spec.name)).config.max_bytes == spec.max_bytes > 0
    for bucket in topo.buckets:
        assert (await js.stream_info(f"KV_{bucket.name}")).config.max_bytes == bucket.max_bytes > 0
    assert reserved_bytes(topo) <= nats_settings.store_bytes
    audit = (await js.stream_info(f"{sp}AUDIT")).config
    assert audit.max_age == pytest.approx(365 * DAY_S)
    assert audit.deny_delete is True and audit.deny_purge is True
    for name in ("CLOUD", "ANOMALIES", "DIAGNOSES"):
        assert (await js.stream_info(f"{sp}{name}")).config.max_age == pytest.approx(30 * DAY_S)
    assert (await js.stream_info(f"{sp}DLQ")).config.max_age == pytest.approx(14 * DAY_S)

    leases = (await js.stream_info(f"KV_{nats_settings.bucket_prefix}-leases")).config
    assert leases.max_age == pytest.approx(30.0)
    assert leases.max_msgs_per_subject == 1
    diagnoser = (await js.stream_info(f"KV_{nats_settings.bucket_prefix}-diagnoser")).config
    assert diagnoser.max_age == pytest.approx(8 * DAY_S)  # outlives the 7-day crash window


async def test_audit_refuses_purge_and_message_delete(
    js: JetStreamContext, nats_settings: NatsSettings, cleanup: None
) -> None:
    await apply_topology(js, nats_settings.topology())
    ack = await js.publish(f"{nats_settings.prefix}.audit.c.n", b"{}")
    stream = f"{nats_settings.stream_prefix}AUDIT"
    with pytest.raises(Exception, match="(?i)purge"):
        await js.purge_stream(stream)
    with pytest.raises(Exception, match="(?i)delete"):
        await js.delete_msg(stream, ack.seq)
    assert (await js.stream_info(stream)).state.messages == 1


async def test_second_apply_changes_nothing(js: JetStreamContext, nats_settings: NatsSettings, cleanup: None) -> None:
    topo = nats_settings.topology()
    await apply_topology(js, topo)
    again = await apply_topology(js, topo)
    assert [c.action for c in again] == ["unchanged"] * 12


async def test_apply_repairs_a_drifted_stream_and_says_what_changed(
    js: JetStreamContext, nats_settings: NatsSettings, cleanup: None
) -> None:
    """What faststream's default re-declaration does (max_age → 0) is undone and reported."""
    topo = nats_settings.topology()
    await apply_topology(js, topo)
    name = f"{nats_settings.stream_prefix}DIAGNOSES"
    current = (await js.stream_info(name)).config
    drifted = StreamConfig.from_response({**current.as_dict(), "max_age": 0, "description": None})
    await js.update_stream(config=drifted)

    changes = {c.name: c for c in await apply_topology(js, topo)}
    assert changes[name].action == "updated"
    assert set(changes[name].fields) == {"max_age", "description"}
    assert "max_age" in changes[name].describe()
    assert (await js.stream_info(name)).config.max_age == pytest.approx(30 * DAY_S)


async def test_bucket_ttl_drift_is_repaired(js: JetStreamContext, nats_settings: NatsSettings, cleanup: None) -> None:
    topo = nats_settings.topology()
    await apply_topology(js, topo)
    kv_stream = f"KV_{nats_settings.bucket_prefix}-leases"
    cfg = (await js.stream_info(kv_stream)).config
    await js.update_stream(config=StreamConfig.from_response({**cfg.as_dict(), "max_age": 300 * 10**9}))
    changes = {c.name: c for c in await apply_topology(js, topo)}
    assert changes[f"{nats_settings.bucket_prefix}-leases"].fields.keys() == {"ttl"}
    assert (await js.stream_info(kv_stream)).config.max_age == pytest.approx(30.0)


async def test_replicas_must_be_odd_cluster_sizes(js: JetStreamContext, nats_settings: NatsSettings) -> None:
    with pytest.raises(ValueError, match="--replicas 2"):
        await apply_topology(js, nats_settings.topology(), replicas=2)


def test_cli_apply_twice_prints_created_then_nothing(nats_settings: NatsSettings) -> None:
    args = [
        sys.executable,
        "-m",
        "nodeheal.cli.main",
        "streams",
        "apply",
        "--nats-url",
        nats_settings.url,
        "--prefix",
        nats_settings.prefix,
        "--stream-prefix",
        nats_settings.stream_prefix,
        "--bucket-prefix",
        nats_settings.bucket_prefix,
    ]
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    first = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"stream {nats_settings.stream_prefix}AUDIT: created" in first.stdout
    assert "12 of 12 streams and buckets created or changed" in first.stdout
    second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert second.returncode == 0, second.stderr
    assert "0 of 12 streams and buckets created or changed" in second.stdout
    assert "created" not in second.stdout.replace("created or changed", "")


def test_cli_without_a_server_says_what_to_do() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "nodeheal.cli.main", "streams", "apply"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--nats-url" in result.stderr and "--embedded" in result.stderr


async def test_cli_apply_under_the_deployed_authorization(tmp_path: Path) -> None:
    """As deployed: `nodeheal streams apply` on a server with the per-role authorization creates the layout with
    the admin's credential (no violation logged), and with the operator's read-only credential it is refused
    with an error that names the credential, not a stack trace, and creates nothing."""
    async with per_role_server(tmp_path, "reader", provision=False) as (server, nc, _admin):
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}

        def apply(role: str) -> subprocess.CompletedProcess[str]:
            args = [sys.executable, "-m", "nodeheal.cli.main", "streams", "apply", "--nats-url", server.url]
            args += ["--creds", str(tmp_path / f"{role}.creds")]
            return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)

        refused = await asyncio.to_thread(apply, "reader")
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr, refused.stderr
        assert "reader.creds" in refused.stderr and "needs the admin credential" in refused.stderr, refused.stderr
        assert "disconnected" not in refused.stderr  # the command's own close is no disconnect to report
        assert await nc.jetstream().streams_info() == []
        created = await asyncio.to_thread(apply, "admin")
        assert created.returncode == 0, created.stderr
        assert "12 of 12 streams and buckets created or changed" in created.stdout
        assert [line for line in violations(tmp_path) if "admin" in line] == []
