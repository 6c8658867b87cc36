"""`nodeheal bench cloud-read`: what a service start pays to read all of CLOUD.

The remediator's view, the detector's rebuild, the diagnoser's rebuild and the ingest's ledger seed read every
message CLOUD keeps (30 days, capped at 5 % of the store) before they start work: a host event is announced
once, days or weeks ahead. This bench fills CLOUD on an embedded nats-server (the production topology) with
`messages` cloud events over `nodes` nodes, a `host_share` of them host events (an Alibaba
`SystemMaintenance.Reboot` notice), the rest `Instance:StateChange` reports (the bulk of CLOUD in a fleet whose
machines come and go), each with the provider's payload in `raw` as the normalizers keep it, then times the
remediator's start-up read as `ConsumerRuntime.follow` does it: `read_range` over CLOUD from its first message,
each message looked at by `FleetView.keeps_cloud` (its head: is it a host event?) and only what it keeps
validated into a `CloudSystemEvent` and handed to `FleetView.on_cloud`. `repeat` reads, the median reported,
with the client's CPU per message.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.msg import Msg

from nodeheal.remediator.views import FleetView
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import read_range
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.subjects import cloud_subject, wildcard
from nodeheal.sim.embedded import EmbeddedNats

CLUSTER = "bench"
STORE_BYTES = 8 * 2**30  # CLOUD's share (5 %) holds 400 MiB: ~300,000 messages of this bench's size


def _event(i: int, *, nodes: int, host: bool, now: datetime) -> CloudSystemEvent:
    node = f"n{i % nodes:05d}"
    instance = f"i-bp{i % nodes:018x}"
    stamp = now - timedelta(minutes=i % 43_200)
    envelope: dict[str, Any] = {  # the CMS message around the event, as the provider sends it
        "ver": "1.0",
        "id": f"{i:08X}-0B26-4E2B-820A-8A000000000{int(not host)}",
        "product": "ECS",
        "resourceId": f"acs:ecs:cn-hangzhou:1690700000000030:instance/{instance}",
        "userId": "1690700000000030",
        "eventTime": stamp.strftime("%Y%m%dT%H%M%S.000+0800"),
        "regionId": "cn-hangzhou",
    }
    common: dict[str, Any] = {
        "id": f"cloud-{i}",
        "time": stamp,
        "cluster": CLUSTER,
        "node": node,
        "cloud": "alibaba",
        "channel": "cms_notification",
        "instance_id": instance,
        "region": "cn-hangzhou",
        "observed_at": stamp,
        "node_mapped": True,
    }
    if host:
        event_id = f"e-bp{i:016x}"
        raw = envelope | {
            "level": "CRITICAL",
            "name": "Instance:SystemMaintenance.Reboot:Scheduled",
            "content": {
                "eventId": event_id,
                "publishTime": stamp.isoformat(),
                "notBefore": (stamp + timedelta(days=1)).isoformat(),
                "instanceId": instance,
                "eventType": "SystemMaintenance.Reboot",
                "eventStatus": "Scheduled",
                "reason": "The host of the instance needs maintenance.",
            },
        }
        return CloudSystemEvent(
            **common,
            provider_event_id=event_id,
            provider_event_type="SystemMaintenance.Reboot",
            provider_status="Scheduled",
            action="reboot",
            cause="planned_maintenance",
            phase="scheduled",
            published_at=stamp,
            not_before=stamp + timedelta(days=1),
            description="The host of the instance needs maintenance.",
            raw=raw,
        )
    raw = envelope | {
        "level": "INFO",
        "name": "Instance:StateChange",
        "content": {"resourceId": instance, "resourceType": "ALIYUN::ECS::Instance", "state": "Running"},
    }
    return CloudSystemEvent(
        **common,
        provider_event_id=f"state-{instance}-{i}",
        provider_event_type="Instance:StateChange",
        provider_status="Running",
        action="state_change",
        cause="user",
        phase="completed",
        is_terminal=True,
        raw=raw,
    )


async def _run(*, messages: int, nodes: int, host_share: float, repeat: int) -> dict[str, Any]:
    now = datetime.now(tz=UTC)
    every = max(1, round(1 / host_share)) if host_share > 0 else 0
    with EmbeddedNats() as server:
        nats = NatsSettings(url=server.url, store_bytes=STORE_BYTES)
        nc = await connect(nats, name="bench-cloud-read")
        try:
            js = nc.jetstream(timeout=nats.publish_timeout_s)
            await apply_topology(js, nats.topology())
            stream = nats.topology().stream(f"{nats.stream_prefix}CLOUD").name
            sizes = 0
            chunk: list[tuple[str, bytes]] = []
            for i in range(messages):
                ev = _event(i, nodes=nodes, host=bool(every) and i % every == 0, now=now)
                body = ev.to_json()
                sizes += len(body)
                chunk.append((cloud_subject(CLUSTER, ev.node, prefix=nats.prefix), body))
                if len(chunk) >= 500:  # every PubAck waited for, 500 in flight
                    await asyncio.gather(*(js.publish(subject, data, timeout=30.0) for subject, data in chunk))
                    chunk = []
            await asyncio.gather(*(js.publish(subject, data, timeout=30.0) for subject, data in chunk))
            info = await js.stream_info(stream)
            stored = int(info.state.messages or 0)
            walls: list[float] = []
            cpus: list[float] = []
            kept = read = 0
            for _ in range(repeat):
                view = FleetView()

                def on_msg(msg: Msg, view: FleetView = view) -> None:  # the remediator's follower, `keep` and all
                    if view.keeps_cloud(msg.data):
                        view.on_cloud(CloudSystemEvent.model_validate_json(msg.data))

                cpu0, wall0 = time.process_time(), time.perf_counter()
                read = await read_range(
                    js, stream=stream, filters=[wildcard("cloud", prefix=nats.prefix)], name="bench", on_msg=on_msg
                )
                walls.append(time.perf_counter() - wall0)
                cpus.append(time.process_time() - cpu0)
                kept = sum(len(events) for events in view.cloud.values())
        finally:
            await nc.close()
    wall = statistics.median(walls)
    cpu = statistics.median(cpus)
    return {
        "messages": messages,
        "stored": stored,
        "read": read,
        "nodes": nodes,
        "host_events_kept": kept,
        "mean_message_bytes": round(sizes / max(1, messages)),
        "stream_mib": round(int(info.state.bytes or 0) / 2**20, 1),
        "wall_s_median": round(wall, 3),
        "wall_s_runs": [round(w, 3) for w in walls],
        "messages_per_s": round(read / wall) if wall else None,
        "client_cpu_us_per_message": round(cpu / max(1, read) * 1e6, 2),
    }


def run_cloud_read(*, messages: int, nodes: int, host_share: float, repeat: int) -> dict[str, Any]:
    return asyncio.run(_run(messages=messages, nodes=nodes, host_share=host_share, repeat=repeat))
