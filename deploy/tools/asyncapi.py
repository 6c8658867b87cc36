#!/usr/bin/env python3
"""Generate the AsyncAPI 3.0 documents of nodeheal's services into docs/asyncapi/<service>.json.

The detector, diagnoser and remediator consume through `nodeheal.runtime.consumer`: their documents
come from the consumers their runtimes declare (the same `Inbound` declarations and the same
faststream subscriber factory the processes start), plus what they declare they publish. The edge
processes (ingest, agent, prober) speak raw nats-py and have no consumer runtime: their contracts
are declared here on a throwaway faststream broker. A test regenerates all of them and fails on drift.

    uv run python deploy/tools/asyncapi.py            # writes docs/asyncapi/*.json
    uv run python deploy/tools/asyncapi.py --check    # exit 1 if a committed document is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faststream.nats import JStream, NatsBroker, PullSub
from faststream.specification import AsyncAPI
from pydantic import BaseModel

from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.commands import NodeCommand, NodeCommandResult
from nodeheal.schemas.crash import CrashReport
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.prober import ProberResults
from nodeheal.schemas.streams import topology
from nodeheal.schemas.subjects import DEFAULT_PREFIX, dlq_subject

OUT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi"
VERSION = "1"
SERVER = "nats://nats.nats.svc.cluster.local:4222"
P = DEFAULT_PREFIX
NODE = "{cluster}.{node}"


@dataclass(frozen=True)
class Reads:
    title: str
    subject: str
    stream: str
    model: type[BaseModel]
    description: str
    durable: str | None = None


@dataclass(frozen=True)
class Writes:
    title: str
    subject: str
    model: type[BaseModel]
    description: str
    stream: str | None = None


def _dlq(service: str) -> Writes:
    return Writes(
        "dead letters",
        dlq_subject(service),
        DeadLetter,
        "Input this service rejected: the reason, where it came from, the raw bytes (acknowledged, never retried).",
        "DLQ",
    )


DESCRIPTIONS = {
    "detector": "Per-node state: probes and cloud events in, anomalies (firing / resolved) out.",
    "diagnoser": "Why: kernel-log knowledge base, cloud events, peer reachability, fleet correlation.",
    "remediator": "Acts within policy, audit first: records every decision in AUDIT before acting.",
}


def runtime_document(service: str) -> AsyncAPI:
    """The document of a service on the shared consumer runtime, from its runtime object (never connected)."""
    from nats.aio.client import Client

    from nodeheal.runtime.settings import NatsSettings

    nats = NatsSettings()
    consumers: Any
    if service == "detector":
        from nodeheal.detector.handlers import DetectorRuntime
        from nodeheal.detector.settings import DetectorSettings

        consumers = DetectorRuntime(settings=DetectorSettings(nats=nats, instance="doc"), nc=Client()).consumers
    elif service == "diagnoser":
        from nodeheal.diagnoser.handlers import DiagnoserRuntime
        from nodeheal.diagnoser.settings import DiagnoserSettings

        consumers = DiagnoserRuntime(settings=DiagnoserSettings(nats=nats, instance="doc"), nc=Client()).consumers
    else:
        from nodeheal.remediator.handlers import RemediatorService
        from nodeheal.remediator.settings import RemediatorSettings

        consumers = RemediatorService(RemediatorSettings(nats=nats, instance="doc")).consumers
    return consumers.document(  # type: ignore[no-any-return]
        title=f"nodeheal {service}", version=VERSION, description=DESCRIPTIONS[service], server=SERVER
    )


CONTRACTS: dict[str, tuple[str, list[Reads | Writes]]] = {
    "ingest": (
        "Cloud instance system events (webhooks and pollers) normalised into CloudSystemEvent.",
        [
            Writes(
                "cloud events",
                f"{P}.cloud.{NODE}",
                CloudSystemEvent,
                "One message per (provider event, observed status); Nats-Msg-Id from (cloud, event id, phase).",
                "CLOUD",
            ),
            _dlq("cloud-events-ingest"),
        ],
    ),
    "agent": (
        "The node agent (DaemonSet): probes of its own node, node-local commands answered by request/reply.",
        [
            Writes(
                "probes",
                f"{P}.probe.{NODE}",
                NodeProbe,
                "One probe per interval of this node (source=agent). No Nats-Msg-Id: a re-sent probe (same id"
                " and time) may be stored twice and the detector counts it once.",
                "PROBES",
            ),
            Writes(
                "crash reports",
                f"{P}.crash.{NODE}",
                CrashReport,
                "Once per boot after a crash: the previous boot's pstore, kdump and journal evidence, bounded; "
                "Nats-Msg-Id from the boot id.",
                "CRASHES",
            ),
            Reads(
                "commands",
                f"{P}.cmd.{NODE}",
                "",
                NodeCommand,
                "Request/reply from the remediator; the reply is a NodeCommandResult. Only this node's subject.",
            ),
            _dlq("node-agent"),
        ],
    ),
    "prober": (
        "The active prober: reachability of every node from outside.",
        [
            Writes(
                "prober results",
                f"{P}.prober.{{cluster}}.{{token}}",
                ProberResults,
                "Reachability results in batches: one message per partition of PROBES (its routing token `_r<k>`"
                " hashes to that partition; never a node's escaped name) for up to `batch_max_results` (500) nodes,"
                " sent as they fill up, every `batch_flush_s` while a round runs and at its end. On the prober's own"
                " subject kind: agents cannot publish there. Nats-Msg-Id = the batch id: a re-sent batch is stored"
                " once and counted once.",
                "PROBES",
            )
        ],
    ),
}


def build(service: str) -> dict[str, Any]:
    spec = runtime_document(service) if service in DESCRIPTIONS else declared_document(service)
    document: dict[str, Any] = json.loads(spec.to_specification().to_json())
    if service in ("agent", "remediator"):
        document.setdefault("components", {}).setdefault("schemas", {})["NodeCommandResult"] = (
            NodeCommandResult.model_json_schema(ref_template="#/components/schemas/{model}")
        )
    return document


def declared_document(service: str) -> AsyncAPI:
    description, items = CONTRACTS[service]
    broker = NatsBroker(SERVER)
    streams = {s.name for s in topology().streams}
    for item in items:
        if isinstance(item, Reads):
            if item.stream:
                assert item.stream in streams, item.stream
            handler = _handler(item.model)
            sub: Any
            if item.durable:
                sub = broker.subscriber(
                    item.subject,
                    stream=JStream(item.stream, declare=False),
                    durable=item.durable,
                    pull_sub=PullSub(batch_size=100, timeout=5.0),
                    title=item.title,
                    description=item.description,
                )
            elif item.stream:
                sub = broker.subscriber(
                    item.subject,
                    stream=JStream(item.stream, declare=False),
                    title=item.title,
                    description=item.description,
                )
            else:
                sub = broker.subscriber(item.subject, title=item.title, description=item.description)
            sub(handler)
        else:
            broker.publisher(
                item.subject,
                schema=item.model,
                title=item.title,
                description=item.description,
                stream=JStream(item.stream, declare=False) if item.stream else None,
            )
    return AsyncAPI(broker, title=f"nodeheal {service}", version=VERSION, description=description)


def _handler(model: type[BaseModel]) -> Any:
    async def handle(body: Any) -> None:
        return None

    handle.__annotations__ = {"body": model, "return": None}
    return handle


def render(service: str) -> str:
    return json.dumps(build(service), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed document differs")
    args = parser.parse_args(argv)
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for service in [*CONTRACTS, *DESCRIPTIONS]:
        path = OUT / f"{service}.json"
        text = render(service)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            sys.stdout.write(f"wrote {path}\n")
    if stale:
        sys.stderr.write(f"stale AsyncAPI documents: {', '.join(stale)}; run: uv run python deploy/tools/asyncapi.py\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
