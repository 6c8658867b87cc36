"""Lease renewals on a real nats-server (the deployed per-role authorization, the leases under the remediator
role's credential): the ladder's fence and the keeper renew the same lease.

Both renew by compare-and-set on the revision they last saw. Before, a fence right before a side effect and the
keeper's periodic renewal that overlapped sent the same `last` revision: one of them failed and marked the lease
lost although nobody else held it. A fence that lost stopped the ladder with an intent and no action; a keeper
that lost stopped renewing, the key expired during a long drain, and another replica could take the node. A
renewal whose reply was lost (its update stored, the answer not received) also made the next renewal fail.
Now renewals of one lease take turns, and a renewal refused for its revision reads the key: a value holding
this lease's own token is adopted and renewed again by compare-and-set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from nodeheal.remediator.leases import Leases
from nodeheal.runtime.settings import NatsSettings
from tests.integration.remediator.harness import Deployed

pytestmark = pytest.mark.nats


@pytest.fixture
async def remediator(deployed: Deployed) -> AsyncIterator[Client]:
    """A connection as the remediator makes it (its role's credential and inbox) on the per-role server."""
    async with deployed.remediator_connection() as client:
        yield client


async def _leases(nc: Client, nats: NatsSettings, holder: str = "replica-a") -> Leases:
    kv = await nc.jetstream().key_value(f"{nats.bucket_prefix}-leases")
    return Leases(kv, holder=holder, ttl_s=30)


async def test_overlapping_renewals_of_one_lease_do_not_lose_it(deployed: Deployed, remediator: Client) -> None:
    nc, topology_ready = remediator, deployed.remediator
    leases = await _leases(nc, topology_ready)
    lease = await leases.acquire(cluster="c1", node="n-overlap", action="d1")
    assert lease is not None
    # the fence before a side effect and the keeper's renewal, at the same moment (and a few more)
    await asyncio.gather(*(leases.renew(lease, action="d1") for _ in range(4)))
    assert not lease.lost
    await leases.renew(lease, action="d1")  # still ours: the next renewal succeeds too
    other = await _leases(nc, topology_ready, holder="replica-b")
    assert await other.acquire(cluster="c1", node="n-overlap", action="d2") is None
    assert deployed.violations() == []


async def test_a_renewal_whose_reply_was_lost_is_adopted(deployed: Deployed, remediator: Client) -> None:
    nc, topology_ready = remediator, deployed.remediator
    leases = await _leases(nc, topology_ready)
    lease = await leases.acquire(cluster="c1", node="n-lost-reply", action="d1")
    assert lease is not None
    # our renewal reached the server and was stored, its reply never came back: the revision we hold is stale
    await leases.kv.update(lease.key, leases.value_of(lease, action="d1"), last=lease.revision)
    await leases.renew(lease, action="d1")
    assert not lease.lost
    entry = await leases.kv.get(lease.key)
    assert entry.revision == lease.revision
    assert deployed.violations() == []


async def test_a_lease_taken_by_another_replica_is_still_lost(deployed: Deployed, remediator: Client) -> None:
    nc, topology_ready = remediator, deployed.remediator
    leases = await _leases(nc, topology_ready)
    lease = await leases.acquire(cluster="c1", node="n-taken", action="d1")
    assert lease is not None
    # it expired and another replica created the key anew (its own token): ours must not be adopted
    await leases.kv.delete(lease.key)
    other = await _leases(nc, topology_ready, holder="replica-b")
    assert await other.acquire(cluster="c1", node="n-taken", action="d2") is not None
    with pytest.raises(Exception, match="taken or expired"):
        await leases.renew(lease, action="d1")
    assert lease.lost
    assert deployed.violations() == []
