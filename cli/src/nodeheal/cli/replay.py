"""`nodeheal replay`: read a time window of the streams and rebuild the incident timelines.

Read-only: named ephemeral pull consumers starting at `--since` (stream time), nothing published, no
state left on the server. The timelines and the ttd/tti/ttr figures come from `nodeheal.cli.timeline`,
the same function the demo report uses. `--what-if` hands the recorded inputs to the in-process
sandbox of `nodeheal.cli.whatif`, which never publishes either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import click
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nodeheal.cli.common import ConnectionNotes, NatsAuth, nats_auth_options, nats_url_option, run
from nodeheal.cli.timeline import Distribution, Timeline, TimelineMessage, build_timeline
from nodeheal.cli.window import parse_time, read_stream
from nodeheal.runtime.kvwatch import initial_values
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.crash import CrashReport
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.prober import ProberResults, result_id
from nodeheal.schemas.subjects import (
    DEFAULT_PREFIX,
    PROBER_KIND,
    escape_token,
    is_prober_results_token,
    probe_partition,
    prober_results_subject,
)

MAX_MESSAGES: Final = 1_000_000
"""Default of `--max-messages`: a replay keeps every decoded message of its window in memory, about 5 KB each
(measured: 30,000 agent probes, one in three full, 5.0 KB each decoded, 0.5 KB as JSON), so a million is
about 5 GB. One hour of `--all` over 50,000 nodes probed every 10 s is 18 million."""

BYTES_PER_MESSAGE: Final = 5_000
"""What one decoded message keeps in memory, about (see MAX_MESSAGES)."""

MAX_FILTER_SUBJECTS: Final = 256
"""Above this many nodes a zone is read with one wildcard filter per stream and narrowed here."""

SOURCES: Final[tuple[tuple[str, str, type[BaseModel]], ...]] = (
    ("PROBES", "probe", NodeProbe),
    ("PROBES", "prober", NodeProbe),  # the active prober's probes (and its ProberResults batches): their own kind
    ("CLOUD", "cloud", CloudSystemEvent),
    ("ANOMALIES", "anomaly", Anomaly),
    ("DIAGNOSES", "diagnosis", Diagnosis),
    ("AUDIT", "audit", RemediationRecord),
    ("CRASHES", "crash", CrashReport),  # the agents' crash reports: the what-if's diagnoser classifies them
)


@dataclass(frozen=True, slots=True)
class Scope:
    """Which nodes a replay covers: all, some (cluster, node) pairs, or one node name in any cluster."""

    label: str
    nodes: frozenset[tuple[str | None, str]] | None = None  # None: every node
    cluster: str | None = None

    def subjects(self, *, prefix: str, kind: str, partitions: int = 0) -> list[str]:
        c = escape_token(self.cluster) if self.cluster else "*"
        if self.nodes is None or len(self.nodes) > MAX_FILTER_SUBJECTS:
            return [f"{prefix}.{kind}.{c}.*"]
        found = {f"{prefix}.{kind}.{escape_token(cl) if cl else c}.{escape_token(node)}" for cl, node in self.nodes}
        if kind == PROBER_KIND:
            # the prober's batches of these nodes: the subject of each node's partition (a node of any cluster:
            # the batches of every cluster, so the kind is read whole; the filters of a consumer must not overlap)
            if any(cl is None for cl, _ in self.nodes) and not self.cluster:
                return [f"{prefix}.{kind}.*.*"]
            for cl, node in self.nodes:
                cluster = cl or self.cluster or ""
                found.add(
                    prober_results_subject(
                        cluster, probe_partition(cluster, node, partitions), partitions, prefix=prefix
                    )
                )
        return sorted(found)

    def keeps(self, message: TimelineMessage | CrashReport) -> bool:
        if self.cluster and message.cluster != self.cluster:
            return False
        if self.nodes is None:
            return True
        return (message.cluster, message.node) in self.nodes or (None, message.node) in self.nodes


@dataclass(frozen=True, slots=True)
class Skipped:
    stream: str
    seq: int
    subject: str
    reason: str


@dataclass
class Recording:
    """What a window of the streams holds, decoded, in stream order per stream."""

    since: datetime
    until: datetime
    scope: Scope
    messages: list[TimelineMessage] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    open_before: list[CloudSystemEvent] = field(default_factory=list)
    """Cloud events still open when the window began: each one's last report stored before `since`. A notice
    comes once, days or weeks ahead, and nothing more until its phase changes: the window rarely holds it,
    and the live detector and remediator knew it (they read all of CLOUD at start)."""
    incomplete: list[dict[str, str | None]] = field(default_factory=list)
    """Streams whose oldest stored message is after `since` while older ones were removed (retention, the byte
    cap, a purge): the start of the window is missing there. One entry per stream: name, first stored time."""
    crashes: list[CrashReport] = field(default_factory=list)
    """The agents' crash reports of the window (CRASHES): not timeline messages, but inputs of the what-if's
    diagnoser, which explains a crashed node's episode by them as the live diagnoser did."""
    audit_before: list[RemediationRecord] = field(default_factory=list)
    """AUDIT records stored in the look-back before `since` (`record_window(audit_look_back=...)`, for
    `--what-if`): our own remediation begun before the window (a reboot's intent / started), which the live
    detector and diagnoser knew. The sandbox's initial state only: not in `messages`, timelines or counts."""

    def inputs(self) -> list[NodeProbe | CloudSystemEvent]:
        """The recorded inputs (probes and cloud events) in time order, for the what-if sandbox."""
        picked = [m for m in self.messages if isinstance(m, NodeProbe | CloudSystemEvent)]
        return sorted(picked, key=lambda m: (m.time, m.node, m.id))


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def zone_nodes(js: JetStreamContext, *, bucket: str, zone: str) -> frozenset[tuple[str | None, str]]:
    """The (cluster, node) pairs of one zone, from the inventory bucket."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError as exc:
        msg = f"inventory bucket {bucket} not found: run `nodeheal streams apply` or pass --bucket-prefix"
        raise click.ClickException(msg) from exc
    # one watcher over the bucket (values included) instead of a round trip per key
    # deletes delivered (and skipped below, no value): `initial_values` counts what the server sent, delete markers
    # included, so a watch that drops them in nats-py would never be confirmed caught up
    watcher = await kv.watchall()
    nodes: set[tuple[str | None, str]] = set()
    seen = 0
    try:
        async for entry in initial_values(watcher):  # everything stored so far, confirmed by the server
            if not entry.key.startswith("node.") or not entry.value:
                continue
            seen += 1
            try:
                inv = NodeInventory.model_validate_json(entry.value)
            except ValidationError:
                continue
            if inv.zone == zone:
                nodes.add((inv.cluster, inv.node))
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    if not nodes:
        msg = f"no node of zone {zone!r} in the inventory bucket {bucket} ({seen} nodes there); check the name"
        raise click.ClickException(msg)
    return frozenset(nodes)


async def record_window(
    js: JetStreamContext,
    *,
    settings: NatsSettings,
    since: datetime,
    until: datetime,
    scope: Scope,
    progress: Progress | None = None,
    streams: Sequence[str] = ("PROBES", "CLOUD", "ANOMALIES", "DIAGNOSES", "AUDIT", "CRASHES"),
    audit_look_back: timedelta = timedelta(0),
    max_messages: int | None = None,
) -> Recording:
    """Read PROBES, CLOUD, ANOMALIES, DIAGNOSES, AUDIT and CRASHES between `since` and `until` (stream time). AUDIT
    is read from `since - audit_look_back`: the records before `since` go to `Recording.audit_before`, not the
    window. Crash reports go to `Recording.crashes`. More than `max_messages` kept (the decoded messages of the
    scope, each prober entry one) stops the read with `WindowTooLargeError` before memory runs out."""
    topo = settings.topology()
    recording = Recording(since=since, until=until, scope=scope)
    kept = 0
    checked: set[str] = set()
    for base, kind, model in SOURCES:
        if base not in streams:
            continue
        stream = topo.stream(f"{settings.stream_prefix}{base}").name
        if base != "CLOUD" and stream not in checked:  # CLOUD is read from its start, not from `since`
            checked.add(stream)
            first = await _first_stored_after(js, stream=stream, since=since)
            if first is not None:
                recording.incomplete.append({"stream": stream, "first_stored": _ts(first)})
        task = progress.add_task(stream, total=None) if progress is not None else None

        def on_total(total: int, task: Any = task) -> None:
            if progress is not None and task is not None:
                progress.update(task, total=total)

        before: dict[tuple[str, str, str], CloudSystemEvent] = {}  # CLOUD before the window: last report per event
        async for stored in read_stream(
            js,
            stream=stream,
            subjects=scope.subjects(prefix=settings.prefix, kind=kind, partitions=settings.probe_partitions),
            # all of CLOUD (30 days, as the services read it); AUDIT from the look-back (`audit_before`)
            since=None if base == "CLOUD" else since - audit_look_back if base == "AUDIT" else since,
            until=until,
            on_total=on_total,
        ):
            if progress is not None and task is not None:
                progress.advance(task)
            if max_messages is not None:
                kept = len(recording.messages) + len(recording.crashes) + len(recording.audit_before)
                if kept > max_messages:
                    raise WindowTooLargeError(kept=kept, limit=max_messages, stream=stream)
            if base == "CLOUD" and stored.stored_at < since:
                try:
                    event = CloudSystemEvent.model_validate_json(stored.data)
                except ValidationError:
                    continue  # not in the window: not listed as skipped either
                key = (event.cluster or "", event.node, event.provider_event_id)
                known = before.get(key)
                # a terminal phase is never overwritten by a late non-terminal report (as the services keep them)
                if scope.keeps(event) and not (known is not None and known.is_terminal and not event.is_terminal):
                    before[key] = event
                continue
            if base == "AUDIT" and stored.stored_at < since:
                try:
                    earlier = RemediationRecord.model_validate_json(stored.data)
                except ValidationError:
                    continue  # not in the window: not listed as skipped either
                if scope.keeps(earlier):
                    recording.audit_before.append(earlier)
                continue
            if kind == PROBER_KIND and _batch_subject(stored.subject, prefix=settings.prefix):
                # a `ProberResults` batch: each entry is the prober probe it stands for (as the detector reads it)
                try:
                    batch = ProberResults.model_validate_json(stored.data)
                except ValidationError as exc:
                    reason = f"not a ProberResults: {exc.error_count()} errors, first: {exc.errors()[0]['msg']}"
                    recording.skipped.append(Skipped(stream, stored.seq, stored.subject, reason))
                    continue
                recording.messages += [p for p in prober_probes(batch) if scope.keeps(p)]
                continue
            try:
                message = model.model_validate_json(stored.data)
            except ValidationError as exc:
                reason = f"not a {model.__name__}: {exc.error_count()} errors, first: {exc.errors()[0]['msg']}"
                recording.skipped.append(Skipped(stream, stored.seq, stored.subject, reason))
                continue
            if isinstance(message, CrashReport):
                if scope.keeps(message):
                    recording.crashes.append(message)
                continue
            assert isinstance(message, NodeProbe | CloudSystemEvent | Anomaly | Diagnosis | RemediationRecord)
            if scope.keeps(message):
                recording.messages.append(message)
        if progress is not None and task is not None:
            info = progress.tasks[task]
            progress.update(task, total=info.completed, completed=info.completed)
        recording.open_before += [e for e in before.values() if not e.is_terminal]
    return recording


class WindowTooLargeError(Exception):
    """More messages of the window than a replay may keep in memory (`--max-messages`)."""

    def __init__(self, *, kept: int, limit: int, stream: str) -> None:
        self.kept, self.limit, self.stream = kept, limit, stream
        gb = limit * BYTES_PER_MESSAGE / 1e9
        super().__init__(
            f"the window holds more than {limit:,} messages of this scope (reached while reading {stream}; about "
            f"{gb:.1f} GB in memory, ~5 KB a message) — stopped before memory runs out. Narrow it: a shorter "
            "--since/--until, --zone ZONE, --cluster CLUSTER or --node NODE; or raise --max-messages "
            "(0: no limit) on a machine with the memory for it"
        )


async def _first_stored_after(js: JetStreamContext, *, stream: str, since: datetime) -> datetime | None:
    """The time of the stream's oldest stored message when it is after `since` and older messages were removed
    (its first sequence is not 1): the window's start is gone. None when the window is whole (or a stream
    that only began after `since`, which lost nothing)."""
    info = await js.stream_info(stream)
    state = info.state
    if not state.messages or not state.first_seq or state.first_seq <= 1:
        return None
    first = await js.get_msg(stream, seq=state.first_seq)
    stored = first.time
    if stored is None or stored <= since:
        return None
    return stored.astimezone(UTC)


def _batch_subject(subject: str, *, prefix: str) -> bool:
    tokens = subject.split(".")
    skip = len(prefix.split("."))
    return len(tokens) > skip + 2 and is_prober_results_token(tokens[skip + 2])


def prober_probes(batch: ProberResults) -> list[NodeProbe]:
    """The prober `NodeProbe` each entry of a batch stands for: the batch's time and round, the entry's evidence id
    (`result_id`, what an anomaly's `probe_ids` name)."""
    return [
        NodeProbe(
            id=result_id(batch.id, i),
            time=batch.time,
            cluster=batch.cluster,
            node=entry.node,
            source="prober",
            seq=batch.seq,
            reachability=entry.reachability,
            ready=entry.ready,
        )
        for i, entry in enumerate(batch.results)
    ]


def build_report(recording: Recording, timeline: Timeline) -> dict[str, Any]:
    """The replay report: the timeline summary (same keys as the demo), the window, and what was skipped."""
    report = timeline.to_report()
    report["window"] = {
        "since": _ts(recording.since),
        "until": _ts(recording.until),
        "scope": recording.scope.label,
        # streams whose oldest stored message is after `since` (older ones removed): the window's start is missing
        "incomplete": recording.incomplete,
        # cloud events still open when the window began (their last report before it): what the live services knew
        "open_cloud_events": [
            {
                "node": e.node,
                "provider_event_id": e.provider_event_id,
                "action": e.action,
                "phase": e.phase,
                "not_before": _ts(e.not_before),
                "reported_at": _ts(e.time),
            }
            for e in sorted(recording.open_before, key=lambda e: (e.node, e.provider_event_id))
        ],
    }
    report["skipped"] = [
        {"stream": s.stream, "seq": s.seq, "subject": s.subject, "reason": s.reason} for s in recording.skipped
    ]
    return report


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def print_summary(timeline: Timeline, *, console: Console, scope: str, max_rows: int = 50) -> None:
    s = timeline.summary
    c = s.counts
    console.print(
        f"[bold]replay[/bold] {scope}: {c.incidents} incidents on {c.nodes_with_incidents} of {c.nodes_seen} nodes "
        f"({c.expected} expected, {c.open} still open at the window end); {c.operator_requests} operator requests; "
        f"{c.probes} probes, {c.cloud_events} cloud events, {c.anomalies} anomalies, {c.diagnoses} diagnoses, "
        f"{c.audit_records} audit records"
    )
    table = Table(title="1-5-10 (seconds from the first bad observation; nearest-rank percentiles)")
    for col in ("", "p50", "p95", "max", "budget", "within budget"):
        table.add_column(col, justify="right" if col else "left")
    rows: list[tuple[str, Distribution, float, int, int]] = [
        ("detect (ttd_s)", s.ttd_s, s.budgets_s["detect"], c.met_detect, c.incidents),
        ("identify (tti_s)", s.tti_s, s.budgets_s["identify"], c.met_identify, c.identified),
        ("repair (ttr_s)", s.ttr_s, s.budgets_s["repair"], c.met_repair, c.repaired),
    ]
    for name, dist, budget, met, n in rows:
        table.add_row(name, _fmt(dist.p50), _fmt(dist.p95), _fmt(dist.max), f"{budget:.0f}", f"{met}/{n}")
    console.print(table)
    if s.by_class:
        by_class = Table(title="by class")
        for col in ("class", "incidents", "ttd p95", "tti p95", "ttr p95", "1-5-10 met"):
            by_class.add_column(col, justify="left" if col == "class" else "right")
        for name, cs in s.by_class.items():
            by_class.add_row(
                name, str(cs.count), _fmt(cs.ttd_s.p95), _fmt(cs.tti_s.p95), _fmt(cs.ttr_s.p95), str(cs.met_1_5_10)
            )
        console.print(by_class)
    if timeline.incidents:
        inc_table = Table(title=f"incidents (first {min(max_rows, len(timeline.incidents))})")
        for col in ("onset", "node", "class", "ttd", "tti", "ttr", "actions", "flags"):
            inc_table.add_column(col)
        for inc in timeline.incidents[:max_rows]:
            flags = ",".join(f for f, on in (("expected", inc.expected), ("open", inc.open)) if on)
            actions = ",".join(a.action + ("(dry)" if a.dry_run else "") for a in inc.actions)
            inc_table.add_row(
                _ts(inc.onset) or "",
                f"{inc.cluster}/{inc.node}",
                inc.klass,
                _fmt(inc.ttd_s),
                _fmt(inc.tti_s),
                _fmt(inc.ttr_s),
                actions,
                flags,
            )
        console.print(inc_table)
    if timeline.operator_requests:
        op_table = Table(
            title=f"operator requests, not incidents (first {min(max_rows, len(timeline.operator_requests))})"
        )
        for col in ("requested", "node", "request", "actions (last phase)"):
            op_table.add_column(col)
        for rq in timeline.operator_requests[:max_rows]:
            op_table.add_row(
                _ts(rq.requested_at) or "",
                f"{rq.cluster}/{rq.node}",
                rq.episode_id or rq.request_id,
                ", ".join(f"{a.action}:{a.phases[-1].phase}" for a in rq.actions) or "—",
            )
        console.print(op_table)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@click.command("replay")
@nats_url_option
@nats_auth_options
@click.option("--since", required=True, help="Window start (stream time): ISO time, or a duration back (2h, 7d).")
@click.option("--until", default=None, help="Window end (stream time): ISO time or duration back. Default: now.")
@click.option("--node", default=None, help="Only this node.")
@click.option("--zone", default=None, help="Only the nodes of this zone (from the inventory bucket).")
@click.option("--all", "all_nodes", is_flag=True, default=False, help="The whole fleet.")
@click.option("--cluster", default=None, help="Only this cluster (combines with --node / --zone / --all).")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the JSON report on stdout.")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the HTML report here.",
)
@click.option(
    "--what-if",
    "what_if",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Re-run detection, diagnosis and planning on the recorded inputs with the rules in this YAML file "
    "(in-process sandbox: nothing is published, nothing acts) and list the decisions that differ.",
)
@click.option(
    "--max-messages",
    type=click.IntRange(min=0),
    default=MAX_MESSAGES,
    show_default=True,
    help="Stop with an error when the window holds more messages of the scope than this (each is kept in memory, "
    "about 5 KB); 0: no limit.",
)
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Subject prefix.")
@click.option("--stream-prefix", default="", help="Prefix of stream names (side-by-side installs).")
@click.option("--bucket-prefix", default="nodeheal", show_default=True, help="Prefix of bucket names.")
def replay(
    nats_url: str | None,
    nats_auth: NatsAuth,
    since: str,
    until: str | None,
    node: str | None,
    zone: str | None,
    all_nodes: bool,
    cluster: str | None,
    as_json: bool,
    html_path: Path | None,
    what_if: Path | None,
    max_messages: int,
    prefix: str,
    stream_prefix: str,
    bucket_prefix: str,
) -> None:
    """Rebuild the incident timelines of a time window: first bad observation, anomaly, diagnosis with its
    evidence, each audit phase, recovery; time to detect / identify / repair against the 1-5-10 budgets.

    Use absolute --since/--until for a report that is byte-for-byte the same on every run.
    """
    chosen = [name for name, on in (("--node", node), ("--zone", zone), ("--all", all_nodes)) if on]
    if len(chosen) != 1:
        raise click.UsageError(f"choose exactly one of --node NODE, --zone ZONE or --all (got {chosen or 'none'})")
    if not nats_url:
        raise click.UsageError("no NATS server: pass --nats-url nats://HOST:4222 or set NATS_URL")
    now = datetime.now(tz=UTC)
    try:
        start = parse_time(since, now=now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    try:
        end = parse_time(until, now=now) if until else now
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--until") from exc
    if end <= start:
        raise click.BadParameter(f"--until {_ts(end)} is not after --since {_ts(start)}", param_hint="--until")
    settings = nats_auth.settings(url=nats_url, prefix=prefix, stream_prefix=stream_prefix, bucket_prefix=bucket_prefix)
    err = Console(stderr=True)
    out = Console(stderr=as_json)
    rules = None
    look_back = timedelta(0)
    if what_if is not None:
        from nodeheal.cli.whatif import audit_look_back, load_rules

        try:
            rules = load_rules(what_if)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--what-if") from exc
        look_back = audit_look_back(rules)

    notes = ConnectionNotes(nats_auth, tool="replay")

    async def body() -> Recording:
        nc = await notes.connect(settings, name="nodeheal-replay")
        try:
            js = nc.jetstream()
            if zone:
                bucket = settings.topology().bucket(f"{bucket_prefix}-inventory").name
                scope = Scope(
                    label=f"zone {zone}", nodes=await zone_nodes(js, bucket=bucket, zone=zone), cluster=cluster
                )
            elif node:
                scope = Scope(label=f"node {node}", nodes=frozenset({(cluster, node)}), cluster=cluster)
            else:
                scope = Scope(label=f"all nodes of {cluster}" if cluster else "all nodes", cluster=cluster)
            with _progress(err) as progress:
                return await record_window(
                    js,
                    settings=settings,
                    since=start,
                    until=end,
                    scope=scope,
                    progress=progress,
                    audit_look_back=look_back,
                    max_messages=max_messages or None,
                )
        finally:
            await nc.close()

    try:
        recording = run(body)
    except click.ClickException:
        raise
    except WindowTooLargeError as exc:
        raise click.ClickException(str(exc)) from exc
    except NotFoundError as exc:
        raise click.ClickException(
            f"a stream is missing on {nats_url} ({exc}): run `nodeheal streams apply` with the same prefixes"
        ) from exc
    except Exception as exc:
        raise click.ClickException(f"replay against {nats_url} failed: {notes.explain(exc)}") from exc

    timeline = build_timeline(recording.messages)
    report = build_report(recording, timeline)
    if rules is not None:
        from nodeheal.cli.whatif import render_differences, run_what_if

        outcome = run_what_if(recording=recording, recorded=timeline, rules=rules)
        report["what_if"] = outcome.to_dict()
        render_differences(outcome, console=out)
    if html_path is not None:
        from nodeheal.cli.report_html import write_replay_html

        write_replay_html(
            timeline, path=html_path, title=f"nodeheal replay — {recording.scope.label}", window=report["window"]
        )
        err.print(f"HTML report written to {html_path}")
    for gap in recording.incomplete:
        err.print(
            f"[yellow]{gap['stream']} holds nothing before {gap['first_stored']} (older messages were removed by its "
            f"retention or byte cap): the window from {_ts(recording.since)} is incomplete there; replay a later "
            "--since for a whole window (see 'window.incomplete' in the JSON)[/yellow]"
        )
    if recording.skipped:
        err.print(
            f"[yellow]{len(recording.skipped)} stored messages could not be read and were skipped"
            " (see 'skipped' in the JSON)[/yellow]"
        )
    print_summary(timeline, console=out, scope=recording.scope.label)
    if as_json:
        click.echo(report_json(report))
