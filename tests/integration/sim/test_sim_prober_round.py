"""The simulated active prober probes each node at the prober's own round (`ProberSettings.interval_s`, what
deploy/ runs), not at the agents' interval, and in the same phase as the node's agent probes: a real
nats-server, the probes as the detector's stream would receive them."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime

import orjson
import pytest

from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats
from nodeheal.sim.engine import PROBER_BATCH_S, FleetSimulator, SimTimings
from nodeheal.sim.fleet import DEFAULT_PROBER_PLAN, FleetSpec

pytestmark = [pytest.mark.nats]

AGENT_S = 0.2
PROBER_S = 1.0


def test_the_simulators_default_prober_round_is_the_probers_setting() -> None:
    from nodeheal.cloud_events.prober.settings import ProberSettings

    assert SimTimings().prober_interval_s == DEFAULT_PROBER_PLAN.interval_s == ProberSettings().interval_s


async def test_each_node_gets_a_prober_probe_per_prober_round_with_one_of_its_agent_probes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with EmbeddedNats(log_file=str(tmp_path / "nats.log")) as server:
        settings = NatsSettings(url=server.url)
        sim = FleetSimulator(
            spec=FleetSpec(nodes=40, seed=3),
            settings=settings,
            timings=SimTimings(AGENT_S, prober_interval_s=PROBER_S),
            probes_only=True,
        )
        nc = await connect(settings, name="pytest-sim-prober")
        seen: dict[str, dict[str, list[float]]] = {"probe": {}, "prober": {}}
        batches: list[int] = []  # entries per prober message

        async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
            body = orjson.loads(msg.data)
            at = round(datetime.fromisoformat(body["time"]).timestamp(), 3)
            kind = msg.subject.split(".")[1]
            if kind == "prober":  # the prober's results come in batches, as the real prober sends them
                batches.append(len(body["results"]))
                for entry in body["results"]:
                    seen[kind].setdefault(entry["node"], []).append(at)
            else:
                seen[kind].setdefault(body["node"], []).append(at)

        sub = await nc.subscribe(f"{settings.prefix}.*.*.*", cb=on_msg)
        try:
            await sim.start(prober_nc=nc, agent_nc=dict.fromkeys(sim.nodes, nc))
            await asyncio.sleep(4.5)
        finally:
            await sim.stop()
            await nc.flush()
            await sub.unsubscribe()
            await nc.close()

    assert set(seen["prober"]) == set(seen["probe"]) == set(sim.nodes)
    # the prober's results of a tick go out together: far fewer messages than results
    assert sum(batches) >= 4 * len(sim.nodes) and len(batches) <= sum(batches) / 4, batches
    for node, agent_times in seen["probe"].items():
        prober_times = seen["prober"][node]
        # one prober probe per prober round (4.5 s: 4 or 5 of them, the first with the node's first agent probe),
        # against ~22 agent probes of the node
        assert 4 <= len(prober_times) <= 6, (node, len(prober_times), len(agent_times))
        assert len(agent_times) >= 3 * len(prober_times), (node, len(agent_times))
        # each taken with one of the node's agent probes (the same round of the probe loop) and sent in the batch
        # of that tick, at most `PROBER_BATCH_S` later: the prober's verdict keeps the agent's phase
        assert all(any(-0.01 <= p - a <= PROBER_BATCH_S + AGENT_S / 4 for a in agent_times) for p in prober_times), node
        gaps = [b - a for a, b in itertools.pairwise(prober_times)]
        # (the send time moves by up to a batch's wait). The first round's batch can leave late while the
        # simulator starts every node's loop on a loaded machine (a fresh-clone CI run: first gap 0.41 s, then
        # 1.01 s each), which shortens only the first gap; from then on the rounds keep their spacing
        assert gaps[0] > 0 and min(gaps[1:]) >= PROBER_S - AGENT_S / 2 - PROBER_BATCH_S - 0.05, (node, gaps)
