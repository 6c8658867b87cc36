#!/usr/bin/env python3
"""Generate the AsyncAPI 3.0 documents of nodeheal's services into docs/asyncapi/<service>.json.

The services consume with raw nats-py (faststream's ~200 µs per message is too much on the probe
path), so `faststream docs gen` on their apps finds no channels. This script declares each
service's real contract on a throwaway faststream broker — the subjects of `nodeheal.schemas.subjects`,
the streams of `nodeheal.schemas.streams`, the pydantic models the services validate — and lets
faststream's `AsyncAPI` produce the documents. A test regenerates them and fails on drift.

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

from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.commands import NodeCommand, NodeCommandResult
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.streams import topology
from nodeheal.schemas.subjects import DEFAULT_PREFIX, dlq_subject, finding_subject

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
                "One probe per interval of this node (source=agent).",
                "PROBES",
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
                "probes",
                f"{P}.prober.{NODE}",
                NodeProbe,
                "Reachability results (source=prober), on the prober's own subject kind: agents cannot publish"
                " there and the prober cannot publish on an agent's `probe.*.*`.",
                "PROBES",
            )
        ],
    ),
    "detector": (
        "Per-node state: probes and cloud events in, anomalies (firing / resolved) out.",
        [
            Reads(
                "probes",
                f"{P}.probe.*.*",
                "PROBES",
                NodeProbe,
                "Batch-pulled by the detector's durable consumer. A body whose cluster/node differ from the"
                " subject's, or whose source is not agent/simulator, goes to the DLQ as 'node mismatch'.",
                "detector",
            ),
            Reads(
                "prober probes",
                f"{P}.prober.*.*",
                "PROBES",
                NodeProbe,
                "The same consumer; only source=prober is accepted here.",
                "detector",
            ),
            Reads(
                "cloud events",
                f"{P}.cloud.*.*",
                "CLOUD",
                CloudSystemEvent,
                "Cloud maintenance becomes an anomaly of its own.",
            ),
            Writes(
                "anomalies",
                f"{P}.anomaly.{NODE}",
                Anomaly,
                "Firing and resolved; deterministic Nats-Msg-Id; carries traceparent (an incident's trace starts).",
                "ANOMALIES",
            ),
            _dlq("detector"),
        ],
    ),
    "diagnoser": (
        "Why: kernel-log knowledge base, cloud events, peer reachability, fleet correlation.",
        [
            Reads(
                "anomalies", f"{P}.anomaly.*.*", "ANOMALIES", Anomaly, "The diagnoser's durable consumer.", "diagnoser"
            ),
            Reads("cloud events", f"{P}.cloud.*.*", "CLOUD", CloudSystemEvent, "Joined with the node's anomalies."),
            Reads("audit", f"{P}.audit.*.*", "AUDIT", RemediationRecord, "Remediation history of a node."),
            Writes(
                "diagnoses",
                f"{P}.diagnosis.{NODE}",
                Diagnosis,
                "Cause, category, confidence, evidence, the recommended action ladder.",
                "DIAGNOSES",
            ),
            Writes(
                "fleet findings",
                finding_subject(),
                FleetFinding,
                "A group failing far above the fleet rate.",
                "DIAGNOSES",
            ),
            _dlq("diagnoser"),
        ],
    ),
    "remediator": (
        "Acts within policy, audit first: records every decision in AUDIT before acting.",
        [
            Reads(
                "diagnoses",
                f"{P}.diagnosis.*.*",
                "DIAGNOSES",
                Diagnosis,
                "The remediator's durable consumer.",
                "remediator",
            ),
            Writes(
                "audit",
                f"{P}.audit.{NODE}",
                RemediationRecord,
                "Intent before the action, then started / succeeded / failed / verified; trace_id of the incident.",
                "AUDIT",
            ),
            Writes(
                "node commands",
                f"{P}.cmd.{NODE}",
                NodeCommand,
                "Request/reply to the node's agent; the reply is a NodeCommandResult.",
            ),
            _dlq("remediator"),
        ],
    ),
}


def build(service: str) -> dict[str, Any]:
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
    spec = AsyncAPI(broker, title=f"nodeheal {service}", version=VERSION, description=description)
    document: dict[str, Any] = json.loads(spec.to_specification().to_json())
    if service in ("agent", "remediator"):
        document.setdefault("components", {}).setdefault("schemas", {})["NodeCommandResult"] = (
            NodeCommandResult.model_json_schema(ref_template="#/components/schemas/{model}")
        )
    return document


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
    for service in CONTRACTS:
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
