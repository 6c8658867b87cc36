"""`nodeheal fleet`: the fleet's crash, schedulable and online rate, its systematic risks, its top crash
buckets and the machines rotated out (AUDIT: nodes retired, instances replaced), read from the streams and
the inventory bucket (read-only: named ephemeral pull consumers and a KV watch, nothing left on the server).

The numbers use the same functions as the diagnoser's `nodeheal_fleet_rate` gauges
(`nodeheal.diagnoser.kpi`): a crash is a diagnosis episode with a crash signature or a crash cause; a node
is down while a node_down / node_hang anomaly of it fires (from ANOMALIES in the window) and not schedulable
while its Kubernetes Node is NotReady or cordoned (from the inventory).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from nats.js.client import JetStreamContext
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from nodeheal.cli.common import NatsAuth, nats_auth_options, nats_url_option, run
from nodeheal.cli.window import parse_time, read_stream
from nodeheal.diagnoser.kpi import fleet_kpis, is_crash
from nodeheal.diagnoser.rules import SILENT_KINDS
from nodeheal.runtime.connect import connect
from nodeheal.runtime.kvwatch import initial_values
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.subjects import DEFAULT_PREFIX, finding_subject, wildcard


@dataclass
class Bucket:
    bucket: str
    kind: str
    count: int = 0
    nodes: set[str] = field(default_factory=set)
    kernels: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    example: str = ""


def _key(cluster: str, node: str) -> str:
    return f"{cluster}/{node}"


async def read_inventory(js: JetStreamContext, *, bucket: str) -> dict[str, NodeInventory]:
    """Every node record of the inventory bucket (a KV watch of `node.>` that ends after the last value)."""
    kv = await js.key_value(bucket)
    out: dict[str, NodeInventory] = {}
    watcher = await kv.watch("node.>", include_history=False)
    try:
        async for entry in initial_values(watcher):  # ends after the last value, confirmed by the server
            if entry.value:
                try:
                    record = NodeInventory.model_validate_json(entry.value)
                except ValidationError:
                    continue
                out[_key(record.cluster, record.node)] = record
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return out


async def collect_fleet(
    js: JetStreamContext,
    *,
    since: datetime,
    now: datetime,
    prefix: str = DEFAULT_PREFIX,
    stream_prefix: str = "",
    bucket_prefix: str = "nodeheal",
    top: int = 10,
) -> dict[str, Any]:
    """The report `nodeheal fleet` prints: KPIs, systematic risks (findings still active), top crash buckets."""
    inventory = await read_inventory(js, bucket=f"{bucket_prefix}-inventory")
    firing: dict[str, str] = {}  # anomaly_key → node key, for silent anomalies still firing
    async for stored in read_stream(
        js, stream=f"{stream_prefix}ANOMALIES", subjects=[wildcard("anomaly", prefix=prefix)], since=since
    ):
        try:
            anomaly = Anomaly.model_validate_json(stored.data)
        except ValidationError:
            continue
        if anomaly.kind not in SILENT_KINDS or anomaly.replay:
            continue
        if anomaly.status == "firing" and not anomaly.expected:
            firing[anomaly.anomaly_key] = _key(anomaly.cluster, anomaly.node)
        else:
            firing.pop(anomaly.anomaly_key, None)
    crash_onsets: dict[str, datetime] = {}  # first anomaly id of the episode → onset
    buckets: dict[str, Bucket] = {}
    findings: dict[str, FleetFinding] = {}
    async for stored in read_stream(
        js,
        stream=f"{stream_prefix}DIAGNOSES",
        subjects=[wildcard("diagnosis", prefix=prefix), finding_subject(prefix=prefix)],
        since=since,
    ):
        if stored.subject == finding_subject(prefix=prefix):
            try:
                finding = FleetFinding.model_validate_json(stored.data)
            except ValidationError:
                continue
            findings[finding.finding_id] = finding
            continue
        try:
            diagnosis = Diagnosis.model_validate_json(stored.data)
        except ValidationError:
            continue
        if not is_crash(diagnosis):
            continue
        episode = diagnosis.anomaly_ids[0]
        if episode in crash_onsets:
            continue
        at = diagnosis.fault_onset or diagnosis.identified_at
        crash_onsets[episode] = at
        sig = diagnosis.crash_signature
        if sig is None:
            continue
        b = buckets.setdefault(sig.bucket, Bucket(bucket=sig.bucket, kind=sig.kind))
        b.count += 1
        node = _key(diagnosis.cluster, diagnosis.node)
        b.nodes.add(node)
        record = inventory.get(node)
        b.kernels[sig.kernel_release or (record.kernel if record else None) or "?"] += 1
        b.models[(record.machine_model if record else None) or "?"] += 1
        b.first_seen = min(b.first_seen or at, at)
        b.last_seen = max(b.last_seen or at, at)
        b.example = b.example or (sig.panic_string or sig.rip_func or sig.bug_at or "")
    retired: set[str] = set()
    replaced: set[str] = set()
    async for stored in read_stream(
        js, stream=f"{stream_prefix}AUDIT", subjects=[wildcard("audit", prefix=prefix)], since=since
    ):
        try:
            audit = RemediationRecord.model_validate_json(stored.data)
        except ValidationError:
            continue
        if audit.phase == "succeeded" and not audit.dry_run and audit.action in ("retire", "replace"):
            (retired if audit.action == "retire" else replaced).add(_key(audit.cluster, audit.node))
    kpis = fleet_kpis(
        inventory=inventory, down=firing.values(), crash_times=crash_onsets.values(), now=now, window=now - since
    )
    risks = [
        {
            "kind": f.kind,
            "dimension": f.dimension,
            "value": f.value,
            "scope": f.scope,
            "ratio": round(f.ratio, 3),
            "p_value": f.p_value,
            "affected_nodes": len(f.affected_nodes),
            "group_nodes": f.group_nodes,
            "signature_bucket": f.signature_bucket,
            "detected_at": f.detected_at.isoformat(),
            "message": f.message,
            "test": f.test,
        }
        for f in sorted(findings.values(), key=lambda f: f.detected_at)
        if not f.cleared and f.kind != "new_crash_bucket"  # a notice to the kernel team, not a risk
    ]
    top_buckets = [
        {
            "bucket": b.bucket,
            "kind": b.kind,
            "count": b.count,
            "nodes": len(b.nodes),
            "kernels": dict(b.kernels.most_common()),
            "machine_models": dict(b.models.most_common()),
            "first_seen": b.first_seen.isoformat() if b.first_seen else None,
            "last_seen": b.last_seen.isoformat() if b.last_seen else None,
            "example": b.example,
        }
        for b in sorted(buckets.values(), key=lambda b: (-b.count, b.bucket))[:top]
    ]
    return {
        "since": since.isoformat(),
        "until": now.isoformat(),
        **kpis.as_dict(),
        "systematic_risks": risks,
        "top_crash_buckets": top_buckets,
        "rotated": len(retired | replaced),
        "retired": len(retired),
        "replaced": len(replaced),
    }


def print_fleet(report: dict[str, Any], *, console: Console) -> None:
    console.print(
        f"[bold]fleet[/] {report['nodes']} nodes, {report['since']} → {report['until']}\n"
        f"  crash rate       {report['crash_rate']:.5f} per node per day ({report['crashes']} crashes)\n"
        f"  schedulable rate {report['schedulable_rate']:.2%} ({report['schedulable']} nodes)\n"
        f"  online rate      {report['online_rate']:.2%} ({report['online']} nodes)\n"
        f"  rotated          {report['rotated']} nodes ({report['retired']} retired, {report['replaced']} replaced)",
        highlight=False,
    )
    risks = Table(title="systematic risks (active findings)")
    for col in ("kind", "group", "scope", "ratio", "nodes", "message"):
        risks.add_column(col)
    for r in report["systematic_risks"]:
        risks.add_row(
            r["kind"], f"{r['dimension']}={r['value']}", r["scope"], f"{r['ratio']:.1f}x",
            str(r["affected_nodes"]), r["message"],
        )  # fmt: skip
    console.print(risks if report["systematic_risks"] else "no systematic risk active")
    buckets = Table(title="top crash buckets")
    for col in ("bucket", "kind", "count", "nodes", "kernels", "first / last seen"):
        buckets.add_column(col)
    for b in report["top_crash_buckets"]:
        buckets.add_row(
            b["bucket"], b["kind"], str(b["count"]), str(b["nodes"]), ", ".join(b["kernels"]),
            f"{b['first_seen']} / {b['last_seen']}",
        )  # fmt: skip
    console.print(buckets if report["top_crash_buckets"] else "no crash bucket in the window")


def write_fleet_html(report: dict[str, Any], path: Path) -> None:
    """One page: the three rates as gauges, risks by ratio, crash buckets by count (plotly, inline JS)."""
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs
    from plotly.subplots import make_subplots

    gauges = make_subplots(rows=1, cols=3, specs=[[{"type": "indicator"}] * 3])
    for col, (name, value, suffix) in enumerate(
        (
            ("crash rate (per node per day)", report["crash_rate"], ""),
            ("schedulable rate", report["schedulable_rate"] * 100, "%"),
            ("online rate", report["online_rate"] * 100, "%"),
        ),
        start=1,
    ):
        gauges.add_trace(
            go.Indicator(mode="number", value=value, number={"suffix": suffix}, title={"text": name}), row=1, col=col
        )
    gauges.update_layout(height=220, margin={"t": 40, "b": 10})
    figures = [gauges]
    if report["systematic_risks"]:
        risks = report["systematic_risks"]
        fig = go.Figure(
            go.Bar(
                x=[r["ratio"] for r in risks],
                y=[f"{r['kind']}: {r['dimension']}={r['value']} ({r['scope']})" for r in risks],
                orientation="h",
                hovertext=[r["message"] for r in risks],
            )
        )
        fig.update_layout(
            title="systematic risks: rate against the rest / own history (x)", height=120 + 30 * len(risks)
        )
        figures.append(fig)
    if report["top_crash_buckets"]:
        bs = report["top_crash_buckets"]
        fig = go.Figure(
            go.Bar(x=[b["count"] for b in bs], y=[b["bucket"] for b in bs], orientation="h",
                   hovertext=[f"{b['kind']}: {b['example']}" for b in bs])
        )  # fmt: skip
        fig.update_layout(title="top crash buckets (episodes)", height=120 + 30 * len(bs))
        figures.append(fig)
    body = "\n".join(f.to_html(full_html=False, include_plotlyjs=False) for f in figures)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>nodeheal fleet</title>"
        f"<script>{get_plotlyjs()}</script></head><body style='font-family:sans-serif'>"
        f"<h1>nodeheal fleet</h1><p>{html.escape(report['since'])} → {html.escape(report['until'])},"
        f" {report['nodes']} nodes, {report['rotated']} rotated ({report['retired']} retired,"
        f" {report['replaced']} replaced)</p>{body}</body></html>"
    )
    path.write_text(page, encoding="utf-8")


def _url(nats_url: str | None) -> str:
    if not nats_url:
        raise click.UsageError("no NATS server: pass --nats-url nats://HOST:4222 or set NATS_URL")
    return nats_url


@click.command("fleet")
@nats_url_option
@nats_auth_options
@click.option("--since", default="24h", show_default=True, help="Window start: ISO time or a duration back (24h, 7d).")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the report as one JSON object.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None, help="Also write an HTML report.")
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many crash buckets.")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Subject prefix.")
@click.option("--stream-prefix", default="", help="Prefix of stream names (side-by-side installs).")
@click.option("--bucket-prefix", default="nodeheal", show_default=True, help="Prefix of bucket names.")
def fleet(
    nats_url: str | None,
    nats_auth: NatsAuth,
    since: str,
    as_json: bool,
    html_path: Path | None,
    top: int,
    prefix: str,
    stream_prefix: str,
    bucket_prefix: str,
) -> None:
    """Crash rate, schedulable rate, online rate, systematic risks and top crash buckets of the fleet."""
    now = datetime.now(UTC)
    try:
        start = parse_time(since, now=now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    if start >= now:
        raise click.BadParameter("the window must start in the past", param_hint="--since")

    async def body() -> dict[str, Any]:
        settings = nats_auth.settings(
            url=_url(nats_url), prefix=prefix, stream_prefix=stream_prefix, bucket_prefix=bucket_prefix
        )
        nc = await connect(settings, name="nodeheal-fleet")
        try:
            return await collect_fleet(
                nc.jetstream(),
                since=start,
                now=now,
                prefix=prefix,
                stream_prefix=stream_prefix,
                bucket_prefix=bucket_prefix,
                top=top,
            )
        finally:
            await nc.close()

    report = run(body)
    if html_path is not None:
        write_fleet_html(report, html_path)
    if as_json:
        click.echo(json.dumps(report, sort_keys=True, default=str))
    else:
        print_fleet(report, console=Console())
        if html_path is not None:
            click.echo(f"report: {html_path}", err=True)
