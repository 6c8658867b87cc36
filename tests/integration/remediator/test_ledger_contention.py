"""The shared ledger under contention: a release or a re-tag of a node's budget slot that loses the
compare-and-set race keeps trying until it lands (or the slot is provably gone or someone else's), never
given up after a fixed number of conflicts. Before, at 128 concurrent releases some gave up ("ledger
contended") and their slots stayed held. Real nats-server with the deployed per-role authorization, the
remediator's `Ledger` on one KV key under the remediator role's credential."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from nodeheal.remediator.ledger import Ledger
from nodeheal.remediator.policy import Slot
from nodeheal.runtime.settings import NatsSettings
from tests.integration.remediator.harness import Deployed

pytestmark = pytest.mark.nats


@pytest.fixture
async def remediator(deployed: Deployed) -> AsyncIterator[Client]:
    """A connection as the remediator makes it (its role's credential and inbox) on the per-role server."""
    async with deployed.remediator_connection() as client:
        yield client


CONCURRENT = 128


def _slot(node: str, *, episode: str, action_id: str | None = None) -> Slot:
    return Slot(
        node=node,
        zone="z1",
        rack=None,
        node_pool="p",
        action_id=action_id or f"act-{node}",
        holder="r1",
        until=datetime.now(UTC) + timedelta(hours=1),
        episode=episode,
    )


async def _ledger_with(nc: Client, settings: NatsSettings, slots: list[Slot]) -> Ledger:
    ledger = Ledger(await nc.jetstream().key_value(f"{settings.bucket_prefix}-control"))

    def put_all(_: list[Slot], starts: list[datetime]) -> tuple[list, list[Slot], list[datetime]]:
        return [], slots, starts

    await ledger.transact(put_all)
    assert len((await ledger.read())[0]) == len(slots)
    return ledger


async def test_many_concurrent_releases_all_land_and_remove_no_other_slot(
    deployed: Deployed, remediator: Client
) -> None:
    """128 ladders give their nodes' slots back at once, through one ledger key; 16 other nodes' slots are
    held throughout. Every release lands (no slot of the 128 is left) and none of the 16 is removed."""
    nc, topology_ready = remediator, deployed.remediator
    mine = [_slot(f"n{i}", episode=f"ep-{i}") for i in range(CONCURRENT)]
    others = [_slot(f"other{i}", episode=f"ep-other-{i}") for i in range(16)]
    ledger = await _ledger_with(nc, topology_ready, mine + others)
    now = datetime.now(UTC)
    await asyncio.gather(*(ledger.release(node=s.node, now=now) for s in mine))
    left = sorted(s.node for s in (await ledger.read())[0])
    assert left == sorted(s.node for s in others)
    assert deployed.violations() == []


async def test_many_concurrent_retags_all_land(deployed: Deployed, remediator: Client) -> None:
    """128 nodes' slots handed to their host events at once: every slot carries its event's episode after."""
    nc, topology_ready = remediator, deployed.remediator
    mine = [_slot(f"n{i}", episode=f"ep-{i}") for i in range(CONCURRENT)]
    ledger = await _ledger_with(nc, topology_ready, mine)
    until = datetime.now(UTC) + timedelta(hours=2)
    await asyncio.gather(*(ledger.retag(node=s.node, episode=f"cloud:{s.node}", until=until) for s in mine))
    slots = (await ledger.read())[0]
    assert sorted((s.node, s.episode) for s in slots) == sorted((s.node, f"cloud:{s.node}") for s in mine)
    assert all(s.until >= until for s in slots)
    assert deployed.violations() == []


async def test_a_release_naming_its_action_leaves_a_slot_another_action_took(
    deployed: Deployed, remediator: Client
) -> None:
    """n1's slot was taken by action A; before A's holder gives it back, the slot is n1's under action B (a
    later episode). A's release names A: B's slot stays. A release naming the slot's own action removes it."""
    nc, topology_ready = remediator, deployed.remediator
    ledger = await _ledger_with(nc, topology_ready, [_slot("n1", episode="ep-b", action_id="act-b")])
    now = datetime.now(UTC)
    assert await ledger.release(node="n1", now=now, action_id="act-a")
    assert (await ledger.slot_of("n1")) is not None
    assert await ledger.release(node="n1", now=now, action_id="act-b")
    assert (await ledger.slot_of("n1")) is None
    assert deployed.violations() == []


async def test_a_release_that_never_lands_is_counted_and_its_slot_left_as_it_was(
    deployed: Deployed, remediator: Client
) -> None:
    """With no time to retry (`settle_deadline_s=0`), 128 concurrent releases each get one try: every one
    that reports it did not land is counted in `nodeheal_ledger_writes_lost_total{op="release"}` and its
    slot is still in the ledger; every one that landed removed its slot only."""
    nc, topology_ready = remediator, deployed.remediator
    mine = [_slot(f"n{i}", episode=f"ep-{i}") for i in range(CONCURRENT)]
    ledger = await _ledger_with(nc, topology_ready, mine)
    impatient = Ledger(ledger.kv, settle_deadline_s=0.0)
    before = REGISTRY.get_sample_value("nodeheal_ledger_writes_lost_total", {"op": "release"}) or 0.0
    now = datetime.now(UTC)
    landed = await asyncio.gather(*(impatient.release(node=s.node, now=now) for s in mine))
    after = REGISTRY.get_sample_value("nodeheal_ledger_writes_lost_total", {"op": "release"}) or 0.0
    lost = sorted(s.node for s, ok in zip(mine, landed, strict=True) if not ok)
    assert sorted(s.node for s in (await ledger.read())[0]) == lost
    assert after - before == len(lost), lost
    assert deployed.violations() == []
