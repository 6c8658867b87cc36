"""SIGKILL the detector process between fetching a probe with a kernel-panic line and publishing its
anomaly (the deterministic hook `NODEHEAL_TEST_KILL_AT=detector.fetched`), restart it as Kubernetes
would, keep the fleet's probes flowing: the kernel-fault anomaly still arrives, exactly once (the
probe is redelivered after ack_wait; its anomaly's Nats-Msg-Id is deterministic).

With cumulative acks (AckPolicy.ALL, before) the restarted process's first ack covered the killed
process's unprocessed probe and the panic was never seen."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import NodeProbe
from nodeheal.sim.embedded import free_port
from tests.integration.deploy.natsauth_loader import RoleServer, violations
from tests.integration.detector.test_detector_nats import anomalies, eventually, probe, publish
from tests.support.http import status

pytestmark = pytest.mark.nats


def start(settings: NatsSettings, port: int, **extra: str) -> subprocess.Popen[bytes]:
    env = (
        os.environ
        | {
            "NODEHEAL_DETECTOR_NATS__URL": settings.url,
            "NODEHEAL_DETECTOR_NATS__PREFIX": settings.prefix,
            "NODEHEAL_DETECTOR_NATS__STREAM_PREFIX": settings.stream_prefix,
            "NODEHEAL_DETECTOR_NATS__BUCKET_PREFIX": settings.bucket_prefix,
            "NODEHEAL_DETECTOR_CLUSTER": "c1",
            "NODEHEAL_DETECTOR_HTTP_PORT": str(port),
            "NODEHEAL_DETECTOR_HTTP_HOST": "127.0.0.1",
            "NODEHEAL_DETECTOR_ACK_WAIT_S": "20",
            "NODEHEAL_DETECTOR_TICK_S": "0.2",
            "NODEHEAL_DETECTOR_LOG_FORMAT": "json",
        }
        | extra
    )
    if settings.creds_file is not None:  # deployed: the detector role's credential and inbox prefix
        env["NODEHEAL_DETECTOR_NATS__CREDS_FILE"] = settings.creds_file
        env["NODEHEAL_DETECTOR_NATS__INBOX_PREFIX"] = settings.inbox_prefix
    env.pop("NODEHEAL_TEST_KILL_AT", None)
    env.update(extra)
    return subprocess.Popen([sys.executable, "-m", "nodeheal.detector"], env=env, stderr=subprocess.DEVNULL)


def stop(*procs: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM what still runs, SIGKILL what does not exit within 15 s."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def ready(proc: subprocess.Popen[bytes], port: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while status(f"http://127.0.0.1:{port}/readyz") != 200:
        assert proc.poll() is None, f"detector exited with {proc.returncode}"
        assert loop.time() < deadline, "detector never became ready"
        await asyncio.sleep(0.2)


def panic_probe() -> NodeProbe:
    healthy = probe(node="k1", seq=1, used=10.0)
    return healthy.model_copy(
        update={
            "id": "k1-panic",
            "time": datetime.now(tz=UTC),
            "kernel_log": ("Kernel panic - not syncing: Fatal exception in interrupt",),
        }
    )


async def test_sigkill_between_fetch_and_publish_loses_no_kernel_line(deployed: RoleServer) -> None:
    nc, topology_ready = deployed.nc, deployed.settings  # the test stands in for the prober, as admin
    port = free_port()
    first = start(deployed.role, port, NODEHEAL_TEST_KILL_AT="detector.fetched")
    second: subprocess.Popen[bytes] | None = None
    try:
        await ready(first, port)
        await publish(nc, topology_ready, panic_probe())
        returncode = await asyncio.to_thread(first.wait, 30)
        assert returncode == -9, "the hook point was not reached"

        second = start(deployed.role, port)
        await ready(second, port)
        for seq in range(1, 6):  # later probes of the fleet: the restarted detector acks them
            await publish(nc, topology_ready, probe(node="k2", seq=seq, used=10.0))
            await asyncio.sleep(0.2)

        def kernel_faults() -> object:
            async def read() -> list[str]:
                return [
                    a.id
                    for a in await anomalies(nc, topology_ready)
                    if a.node == "k1" and a.kind == "kernel_fault" and a.status == "firing"
                ]

            return read()

        # ack_wait (20 s) is longer than the restart, so the restarted detector acks the later probes
        # before the server would redeliver the unprocessed one
        await eventually(kernel_faults, timeout_s=60)
        await asyncio.sleep(1.0)
        assert len(await kernel_faults()) == 1  # type: ignore[misc]
        assert status(f"http://127.0.0.1:{port}/healthz") == 200
    finally:
        stop(first, second)
    assert violations(deployed.dir) == []


async def test_a_reboot_while_the_detector_is_down_is_still_an_unexpected_reboot(
    deployed: RoleServer,
) -> None:
    """The chaos demo's lost bad-kernel crash: a node crashed, the detector raised node_down, was
    SIGKILLed, and the node came back with a new boot id while the detector was away. The restart
    seeded each node's boot id from the *last* probe in the stream — already the new boot's, stored
    beyond the durable's ack floor — so when those probes were delivered nothing had changed: no
    unexpected_reboot, and the diagnoser (holding the lone node_down) saw the node simply come back.
    The seed must be what the killed process had processed: the boot id as of the ack floor."""
    nc, topology_ready = deployed.nc, deployed.settings  # the test stands in for the prober, as admin
    port = free_port()
    first = start(deployed.role, port)
    second: subprocess.Popen[bytes] | None = None
    durable_stream = topology_ready.topology().stream(f"{topology_ready.stream_prefix}PROBES").name
    js = nc.jetstream()
    try:
        await ready(first, port)
        for seq in range(1, 4):  # boot b1 of r1, seen and acknowledged
            await publish(nc, topology_ready, probe(node="r1", seq=seq, used=10.0, boot="b1"))
            await publish(nc, topology_ready, probe(node="r2", seq=seq, used=10.0, boot="b1"))

        async def all_acked() -> bool:
            info = await js.consumer_info(durable_stream, "detector")
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.delivered.stream_seq >= 6

        await eventually(all_acked, timeout_s=30)
        first.kill()  # SIGKILL, as the chaos run does
        assert await asyncio.to_thread(first.wait, 30) == -9
        # while it is away, r1 reboots (a new boot id) and r2 goes on
        for seq in range(4, 7):
            await publish(nc, topology_ready, probe(node="r1", seq=seq, used=10.0, boot="b2"))
            await publish(nc, topology_ready, probe(node="r2", seq=seq, used=10.0, boot="b1"))

        second = start(deployed.role, port)
        await ready(second, port)

        async def reboots() -> list[str]:
            return [
                a.node
                for a in await anomalies(nc, topology_ready)
                if a.kind == "unexpected_reboot" and a.status == "firing"
            ]

        await eventually(reboots, timeout_s=30)
        await asyncio.sleep(1.0)
        assert await reboots() == ["r1"]  # once, and only the node that rebooted
    finally:
        stop(first, second)


async def judged_again_after_a_kill(deployed: RoleServer, *, past_duplicate_window: bool) -> None:
    """A detector SIGKILLed after a chunk's anomalies were stored and before the chunk's ack
    (`detector.published`); the next process is delivered the chunk again and judges it again. Asserts that
    ANOMALIES holds what the chunk raised once each, and no reopened outage."""
    nc, settings = deployed.nc, deployed.settings  # the test stands in for the prober, as admin
    port = free_port()
    durable_stream = settings.topology().stream(f"{settings.stream_prefix}PROBES").name
    js = nc.jetstream()
    if past_duplicate_window:  # ANOMALIES forgets the ids after 1 s instead of 2 minutes
        anomalies_stream = settings.topology().stream(f"{settings.stream_prefix}ANOMALIES").name
        config = (await js.stream_info(anomalies_stream)).config
        config.duplicate_window = 1.0
        await js.update_stream(config)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = start(deployed.role, port)
        procs.append(first)
        await ready(first, port)
        await publish(nc, settings, probe(node="r1", seq=1, used=10.0, boot="b1"))

        async def acked(through: int) -> bool:
            info = await js.consumer_info(durable_stream, "detector")
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.delivered.stream_seq >= through

        await eventually(lambda: acked(1), timeout_s=30)
        stop(first)  # a clean stop: r1's first boot is processed and acknowledged
        # the backlog the next process reads as one chunk: d1's disk fills and clears (fires, resolves), r1
        # reboots, ok1 is fine
        backlog = [
            probe(node="d1", seq=1, used=99.0),
            probe(node="r1", seq=2, used=10.0, boot="b2"),
            probe(node="d1", seq=2, used=10.0),
            probe(node="ok1", seq=1, used=10.0),
            probe(node="d1", seq=3, used=10.0),
        ]
        for p in backlog:
            await publish(nc, settings, p)

        second = start(deployed.role, port, NODEHEAL_TEST_KILL_AT="detector.published")
        procs.append(second)
        assert await asyncio.to_thread(second.wait, 60) == -9, "the hook point was not reached"
        stored = sorted((a.node, a.kind, a.status) for a in await anomalies(nc, settings))
        # the killed process judged the whole chunk and stored what it raised, and acknowledged none of it
        assert stored == [
            ("d1", "disk_full", "firing"),
            ("d1", "disk_full", "resolved"),
            ("r1", "unexpected_reboot", "firing"),
        ]
        assert (await js.consumer_info(durable_stream, "detector")).ack_floor.stream_seq == 1
        if past_duplicate_window:
            await asyncio.sleep(1.5)  # the restart comes after the stream forgot the ids (a crash loop's back-off)

        third = start(deployed.role, port)
        procs.append(third)
        await ready(third, port)
        await eventually(lambda: acked(1 + len(backlog)), timeout_s=60)  # the chunk, judged again and acked
        after = sorted((a.node, a.kind, a.status) for a in await anomalies(nc, settings))
        assert after == stored  # nothing twice, no outage reopened
        assert status(f"http://127.0.0.1:{port}/healthz") == 200
    finally:
        stop(*procs)
    assert violations(deployed.dir) == []


async def test_probes_judged_before_a_kill_and_delivered_again_raise_nothing_twice(deployed: RoleServer) -> None:
    """The restarted detector is delivered the killed one's unacknowledged chunk again (nothing above the
    durable's ack floor is known processed) and judges it again, several nodes in one chunk. What it raised is
    not raised twice and no outage is reopened: the re-judged episode gets the same onset, so the same
    deterministic `Nats-Msg-Id` (the stream drops the copy), and a firing restored from ANOMALIES (the reboot)
    is not fired again. A skip of redelivered probes by stream sequence would add nothing here: the ack floor is
    the only record of what was processed that survives the kill (docs/detector.md, "Redelivered probes")."""
    await judged_again_after_a_kill(deployed, past_duplicate_window=False)
    assert violations(deployed.dir) == []


async def test_an_episode_judged_again_after_the_duplicate_window_is_not_stored_twice(deployed: RoleServer) -> None:
    """The same, with the restart after ANOMALIES' duplicate window (a crash loop's back-off is minutes): the
    stream no longer drops the copy, and the episode the chunk fired and resolved was stored a second time. The
    rebuild's replay saw it resolved, so the detector raises it no more (`Detector.restore`)."""
    await judged_again_after_a_kill(deployed, past_duplicate_window=True)
    assert violations(deployed.dir) == []
