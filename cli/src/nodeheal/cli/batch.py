"""`nodeheal batch ACTION --selector 'k=v,…'`: an operator's action on every node a label selector matches,
submitted through the remediator — never around it.

The command lists the nodes through the Kubernetes API (official client), then publishes one *operator
diagnosis* per node on the node's `diagnosis` subject (cause `operator_request`, confidence 1, the ladder of
the action), at most `--max-parallel` nodes in flight. The remediator treats it like any diagnosis: the
node's lease, the budgets, the disruption rate, the storm guard, pause, approvals, audit first,
verification. Progress is read back from AUDIT (a named ephemeral pull consumer), never from the remediator
itself.

Ids are deterministic: the episode of a node is `batch:<batch id>:<action>:<node>` (so the remediator's
action ids are too: a step is never run twice for one batch), the diagnosis id and its `Nats-Msg-Id` come
from the batch id, the action and the node. A batch is resumable: `--resume BATCH_ID` reads the batch's
AUDIT records, follows the nodes already under way and submits only the nodes that have none.

The cluster is checked against the inventory bucket before anything is submitted (`check_cluster`): the
remediator refuses a diagnosis for another cluster than its own, so a batch for a cluster the inventory does
not know, or for nodes it does not list in that cluster, would only collect refusals. An `uncordon` refuses
(without `--force`) nodes a live ladder holds (`live_holds`): its budget slot in the ledger, or its lease.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import click
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nodeheal.cli.common import NatsAuth, nats_auth_options, nats_url_option, run
from nodeheal.cli.window import read_stream
from nodeheal.remediator.actions.kube import KubeActions, build_api_client
from nodeheal.remediator.ledger import Ledger
from nodeheal.remediator.settings import KubeSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import publish_model, stop_if_cancelled
from nodeheal.runtime.kvwatch import initial_values
from nodeheal.schemas.anomaly import Evidence
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.causes import OPERATOR_REQUEST
from nodeheal.schemas.diagnosis import ActionName, Diagnosis, RecommendedAction
from nodeheal.schemas.ids import deterministic_id, new_id
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from nodeheal.schemas.subjects import DEFAULT_PREFIX, diagnosis_subject, escape_token

LADDERS: dict[str, tuple[ActionName, ...]] = {
    "reboot": ("cordon", "drain", "reboot"),
    "cordon": ("cordon",),
    "uncordon": ("uncordon",),
    "drain": ("cordon", "drain"),
    "retire": ("cordon", "drain", "retire"),
    "replace": ("cordon", "drain", "retire", "replace"),
}
"""What each batch action asks the remediator for (a reboot is then verified and uncordoned by it; a replace
waits at the remediator for `nodeheal approve ACTION_ID` of each node, as every replace does)."""

Status = Literal["pending", "submitted", "running", "blocked", "waiting_approval", "done", "failed", "skipped"]
TERMINAL: frozenset[str] = frozenset({"done", "failed", "skipped"})
_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_batch_id() -> str:
    return f"b-{new_id()}"


def batch_started(batch_id: str) -> datetime:
    """When the batch began: its id is `b-` and a time-sortable id (48-bit milliseconds first)."""
    body = batch_id.removeprefix("b-").upper()
    if not batch_id.startswith("b-") or len(body) != 26 or any(c not in _B32 for c in body):
        msg = f"{batch_id!r} is not a batch id (it looks like b-01J…, printed when the batch started)"
        raise ValueError(msg)
    ms = 0
    for c in body[:10]:
        ms = ms * 32 + _B32.index(c)
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def episode_of(batch_id: str, action: str, node: str) -> str:
    return f"batch:{batch_id}:{action}:{node}"


def diagnosis_id_of(batch_id: str, action: str, node: str) -> str:
    return deterministic_id(batch_id, action, node, prefix="diag-op-")


def operator_diagnosis(*, batch_id: str, action: str, node: str, cluster: str, reason: str, selector: str) -> Diagnosis:
    """The request for one node, as a diagnosis the remediator runs through every gate."""
    episode = episode_of(batch_id, action, node)
    return Diagnosis(
        id=diagnosis_id_of(batch_id, action, node),
        cluster=cluster,
        node=node,
        anomaly_ids=(episode,),
        episode_id=episode,
        category="ops",
        cause=OPERATOR_REQUEST,
        confidence=1.0,
        evidence=(
            Evidence(
                kind="operator",
                summary=f"nodeheal batch {action} --selector {selector!r}: {reason}",
                details={"batch_id": batch_id, "action": action, "selector": selector},
            ),
        ),
        recommended=tuple(
            RecommendedAction(action=a, reason=f"operator request ({batch_id}): {reason}") for a in LADDERS[action]
        ),
        identified_at=datetime.now(tz=UTC),
    )


@dataclass
class NodeState:
    node: str
    records: list[RemediationRecord] = field(default_factory=list)
    submitted: bool = False


def node_status(action: str, state: NodeState) -> tuple[Status, str]:
    """Where one node of the batch is, from its episode's AUDIT records."""
    records = state.records
    if not records:
        return ("submitted" if state.submitted else "pending"), ""
    # the node's own page (a storm's escalation is recorded under the episode that met the storm: not ours)
    escalated = [
        r
        for r in records
        if r.action == "escalate" and r.phase == "succeeded" and r.reason.startswith("escalated to a person")
    ]
    if escalated:
        return "failed", escalated[-1].reason
    handed = [r for r in records if r.action == "wait_for_cloud_event" and r.phase in ("succeeded", "verified")]
    if handed:  # a host event of the cloud reboots the node: the remediator's maintenance loop takes it from here
        return "done", handed[-1].reason
    final = LADDERS[action][-1]
    if action == "reboot":
        verified = any(r.action == "reboot" and r.phase == "verified" for r in records)
        given_back = [r for r in records if r.action == "uncordon" and r.phase in ("succeeded", "skipped")]
        if verified and given_back:
            return "done", given_back[-1].reason
    else:
        finished = [r for r in records if r.action == final and r.phase == "succeeded"]
        if finished:
            return "done", finished[-1].reason
    last = records[-1]
    # refused (e.g. stale after waiting for a budget), or stopped: the remediator acked the request, so
    # nothing more comes for it (an uncordon skipped because a host event is due belongs to a reboot's end)
    stopped = [r for r in records if r.phase == "skipped" and r.action != "uncordon"]
    if stopped:
        return "skipped", stopped[-1].reason
    if last.phase == "awaiting_approval":
        return "waiting_approval", last.reason
    if last.phase == "blocked":
        return "blocked", last.reason
    return "running", f"{last.action} {last.phase}"


@dataclass
class Batch:
    batch_id: str
    action: str
    selector: str
    cluster: str
    nodes: dict[str, NodeState]

    def status(self, node: str) -> tuple[Status, str]:
        return node_status(self.action, self.nodes[node])

    def counts(self) -> Counter[str]:
        return Counter(self.status(n)[0] for n in self.nodes)

    def report(self) -> dict[str, Any]:
        rows = {n: dict(zip(("status", "detail"), self.status(n), strict=True)) for n in sorted(self.nodes)}
        return {
            "batch_id": self.batch_id,
            "action": self.action,
            "selector": self.selector,
            "cluster": self.cluster,
            "summary": dict(sorted(self.counts().items())),
            "nodes": rows,
        }


async def _follow(
    js: JetStreamContext,
    batch: Batch,
    *,
    stream: str,
    subject: str,
    since: datetime,
    caught_up: asyncio.Event,
    changed: asyncio.Event,
) -> None:
    """Feed the batch's AUDIT records into its node states, from `since` on, live."""
    prefix = episode_of(batch.batch_id, batch.action, "")
    total: list[int] = []
    seen = 0

    def on_total(n: int) -> None:
        total.append(n)
        if n == 0:
            caught_up.set()

    async for stored in read_stream(js, stream=stream, subjects=[subject], since=since, follow=True, on_total=on_total):
        seen += 1
        try:
            record = RemediationRecord.model_validate_json(stored.data)
        except ValidationError:
            continue
        if record.episode_id and record.episode_id.startswith(prefix):
            state = batch.nodes.setdefault(record.node, NodeState(record.node, submitted=True))
            state.records.append(record)
            changed.set()
        if total and seen >= total[0]:
            caught_up.set()


async def wait_for_change(changed: asyncio.Event, *, timeout_s: float) -> None:
    """Until `changed` is set or `timeout_s` has passed. A Ctrl-C that lands in the loop turn in which
    `changed` is set is not lost: Python 3.11's `wait_for` returns and drops it (CPython gh-86296), and the
    batch went on submitting nodes."""
    try:
        await asyncio.wait_for(changed.wait(), timeout=timeout_s)
    except TimeoutError:
        pass
    stop_if_cancelled()


async def run_batch(
    js: JetStreamContext,
    batch: Batch,
    *,
    max_parallel: int,
    reason: str,
    prefix: str,
    stream_prefix: str,
    since: datetime,
    progress: Progress | None = None,
) -> Batch:
    """Submit the nodes that have no record yet, at most `max_parallel` in flight, until every node is
    done, failed or skipped. Cancelled (Ctrl-C), it leaves the batch resumable."""
    caught_up, changed = asyncio.Event(), asyncio.Event()
    subject = f"{prefix}.audit.{escape_token(batch.cluster)}.*"
    follower = asyncio.create_task(
        _follow(
            js,
            batch,
            stream=f"{stream_prefix}AUDIT",
            subject=subject,
            since=since,
            caught_up=caught_up,
            changed=changed,
        )
    )
    task = progress.add_task("batch", total=len(batch.nodes)) if progress is not None else None
    announced: set[str] = set()
    try:
        info = await js.stream_info(f"{stream_prefix}AUDIT")
        if info.state.messages:
            ready = asyncio.ensure_future(caught_up.wait())
            await asyncio.wait([ready, follower], return_when="FIRST_COMPLETED")
            ready.cancel()
        if follower.done():
            follower.result()  # the read failed: say why
        queue = [n for n in sorted(batch.nodes) if not batch.nodes[n].records]
        for state in batch.nodes.values():
            state.submitted = state.submitted or bool(state.records)
        while True:
            statuses = {n: batch.status(n)[0] for n in batch.nodes}
            in_flight = [n for n, s in statuses.items() if batch.nodes[n].submitted and s not in TERMINAL]
            while queue and len(in_flight) < max_parallel:
                node = queue.pop(0)
                d = operator_diagnosis(
                    batch_id=batch.batch_id,
                    action=batch.action,
                    node=node,
                    cluster=batch.cluster,
                    reason=reason,
                    selector=batch.selector,
                )
                await publish_model(js, diagnosis_subject(batch.cluster, node, prefix=prefix), d, msg_id=d.id)
                batch.nodes[node].submitted = True
                in_flight.append(node)
                stop_if_cancelled()  # a Ctrl-C that landed as the stream acknowledged stops the next submission
            for node in sorted(batch.nodes):
                status, detail = batch.status(node)
                if status == "waiting_approval" and node not in announced:
                    # said once, when the node starts waiting: the person needs the action id now, not at the end
                    announced.add(node)
                    line = f"{node}: waiting for approval — {detail}"
                    if progress is not None:
                        progress.console.print(line, highlight=False, markup=False, soft_wrap=True)
                    else:
                        click.echo(line, err=True)
            counts = batch.counts()
            if progress is not None and task is not None:
                shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                progress.update(task, completed=sum(counts[s] for s in TERMINAL), description=shown)
            if not queue and not in_flight:
                return batch
            if follower.done():
                follower.result()
            changed.clear()
            await wait_for_change(changed, timeout_s=1.0)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


def print_summary(batch: Batch, *, console: Console) -> None:
    counts = batch.counts()
    table = Table(title=f"batch {batch.batch_id}: {batch.action} --selector {batch.selector}")
    for col in ("node", "status", "detail"):
        table.add_column(col)
    for node in sorted(batch.nodes):
        status, detail = batch.status(node)
        table.add_row(node, status, detail[:160])
    console.print(table)
    order = ("done", "failed", "skipped", "waiting_approval", "blocked", "running", "submitted", "pending")
    console.print("  ".join(f"{s.replace('_', ' ')}: {counts[s]}" for s in order if counts[s]) or "no node")


async def inventory_clusters(js: JetStreamContext, *, bucket: str) -> dict[str, set[str]]:
    """The nodes of each cluster the inventory bucket lists (its `node.<cluster>.<node>` records)."""
    kv = await js.key_value(bucket)
    out: dict[str, set[str]] = {}
    watcher = await kv.watch("node.>", include_history=False)
    try:
        async for entry in initial_values(watcher):  # ends after the last value, confirmed by the server
            if not entry.value:
                continue
            try:
                record = NodeInventory.model_validate_json(entry.value)
            except ValidationError:
                continue
            out.setdefault(record.cluster, set()).add(record.node)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return out


def _listed(items: list[str] | set[str], *, most: int = 10) -> str:
    ordered = sorted(items)
    more = f" and {len(ordered) - most} more" if len(ordered) > most else ""
    return ", ".join(ordered[:most]) + more


def check_cluster(cluster: str | None, nodes: list[str], known: dict[str, set[str]], *, bucket: str) -> str:
    """The cluster to submit for: `cluster`, or (None) the only one the inventory knows. Raises a
    `ClickException` naming the clusters the inventory knows and the flag to pass when the cluster is not
    known there, none was given and it knows several (or none), or some nodes are not listed in it."""
    clusters = ", ".join(sorted(known)) or "none"
    if cluster is None:
        if len(known) != 1:
            why = "lists no node" if not known else f"knows {len(known)} clusters ({clusters})"
            msg = (
                f"which cluster? the inventory (bucket {bucket}) {why}: pass --cluster NAME (or set "
                "NODEHEAL_CLUSTER), the remediator's NODEHEAL_REMEDIATOR_CLUSTER"
                + ("" if known else "; is the inventory service running, and is --bucket-prefix this installation's?")
            )
            raise click.ClickException(msg)
        cluster = next(iter(known))
        click.echo(f"cluster {cluster}: the only one the inventory knows (pass --cluster to choose)", err=True)
    if cluster not in known:
        msg = (
            f"the inventory (bucket {bucket}) knows no cluster {cluster!r}; it knows: {clusters}. Pass --cluster NAME "
            "(or set NODEHEAL_CLUSTER) with the remediator's NODEHEAL_REMEDIATOR_CLUSTER: the remediator refuses "
            "diagnoses for another cluster than its own"
        )
        raise click.ClickException(msg)
    missing = [n for n in nodes if n not in known[cluster]]
    if missing:
        elsewhere = sorted(c for c, listed in known.items() if c != cluster and listed.intersection(missing))
        msg = (
            f"{len(missing)} of the {len(nodes)} node(s) are not in cluster {cluster!r} of the inventory (bucket "
            f"{bucket}): {_listed(missing)}"
            + (f"; listed in cluster(s) {', '.join(elsewhere)}" if elsewhere else "")
            + f". The inventory knows clusters: {clusters}; pass the nodes' --cluster NAME, or a --selector that "
            "matches only nodes of this cluster"
        )
        raise click.ClickException(msg)
    return cluster


async def live_holds(
    js: JetStreamContext,
    *,
    control_bucket: str,
    leases_bucket: str,
    cluster: str,
    nodes: list[str],
    own_episode: Callable[[str], str],
    own_diagnosis: Callable[[str], str],
) -> dict[str, str]:
    """The nodes a live ladder (not this batch's own) holds, each with who holds it: an unexpired budget slot in
    the remediator's ledger (the node is disrupted by that episode: cordoned, drained, rebooting, waiting for a
    host event), or the node's lease (a ladder acting on it right now)."""
    now = datetime.now(tz=UTC)
    wanted = set(nodes)
    held: dict[str, str] = {}
    slots, _, _ = await Ledger(await js.key_value(control_bucket)).read()
    for slot in slots:
        if slot.node in wanted and slot.until > now and slot.episode != own_episode(slot.node):
            held[slot.node] = (
                f"episode {slot.episode or '?'} holds its budget slot ({slot.action_id}, remediator {slot.holder}, "
                f"until {slot.until.isoformat(timespec='seconds')})"
            )
    leases = await js.key_value(leases_bucket)
    for node in sorted(wanted - held.keys()):
        try:
            entry = await leases.get(inventory_key(cluster, node))
        except KeyNotFoundError:
            continue
        try:
            value = json.loads(entry.value or b"{}")
        except ValueError:
            value = {}
        if value.get("action") == own_diagnosis(node):
            continue
        held[node] = (
            f"remediator {value.get('holder', '?')} is acting on it now (lease for {value.get('action') or '?'})"
        )
    return held


def _url(nats_url: str | None) -> str:
    if not nats_url:
        raise click.UsageError("no NATS server: pass --nats-url nats://HOST:4222 or set NATS_URL")
    return nats_url


async def _list_nodes(selector: str, *, kube_url: str | None, kubeconfig: str | None) -> list[str]:
    settings = KubeSettings(api_url=kube_url, kubeconfig=kubeconfig)
    kube = KubeActions(await build_api_client(settings), settings=settings, component="nodeheal-batch")
    try:
        return await kube.list_nodes(selector)
    finally:
        await kube.close()


@click.command("batch")
@click.argument("action", type=click.Choice(sorted(LADDERS)))
@click.option("--selector", "-l", required=True, help="Label selector of the nodes: 'k=v,k2=v2'.")
@click.option(
    "--max-parallel",
    type=click.IntRange(1, 10_000),
    default=1,
    show_default=True,
    help="Nodes in flight at once (keep it at most the smallest budget that applies).",
)
@click.option("--dry-run", is_flag=True, default=False, help="List the nodes and the ladder; submit nothing.")
@click.option("--reason", default="operator request", show_default=True, help="Why (goes to every record).")
@click.option("--resume", "resume_id", default=None, help="Continue an interrupted batch (its id, b-…).")
@click.option(
    "--cluster",
    envvar="NODEHEAL_CLUSTER",
    default=None,
    help="Kubernetes cluster name used in subjects (the remediator's NODEHEAL_REMEDIATOR_CLUSTER); checked "
    "against the inventory. Default: the only cluster the inventory knows.",
)
@click.option(
    "--kube-url",
    envvar="NODEHEAL_KUBE_URL",
    default=None,
    help="Kubernetes API server URL (default: in-cluster, then the kubeconfig).",
)
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None, help="kubeconfig file.")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the summary as one JSON object.")
@click.option(
    "--force",
    is_flag=True,
    default=False,
    help="uncordon: also the nodes a live ladder holds (its budget slot or lease), undoing its cordon.",
)
@nats_url_option
@nats_auth_options
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Subject prefix.")
@click.option("--stream-prefix", default="", help="Prefix of stream names (side-by-side installs).")
@click.option("--bucket-prefix", default="nodeheal", show_default=True, help="Prefix of bucket names (the inventory).")
def batch(
    action: str,
    selector: str,
    max_parallel: int,
    dry_run: bool,
    reason: str,
    resume_id: str | None,
    cluster: str | None,
    kube_url: str | None,
    kubeconfig: str | None,
    as_json: bool,
    force: bool,
    nats_url: str | None,
    nats_auth: NatsAuth,
    prefix: str,
    stream_prefix: str,
    bucket_prefix: str,
) -> None:
    """Run ACTION on every node matching --selector, through the remediator (leases, budgets, storm guard,
    audit, approvals). Ctrl-C leaves the batch resumable with --resume BATCH_ID."""
    if resume_id is not None:
        try:
            since = batch_started(resume_id) - timedelta(seconds=5)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--resume") from None
        batch_id = resume_id
    else:
        batch_id = new_batch_id()
        since = datetime.now(tz=UTC) - timedelta(seconds=5)
    url = None if dry_run else _url(nats_url)  # say what is missing before touching anything
    nodes = run(lambda: _list_nodes(selector, kube_url=kube_url, kubeconfig=kubeconfig))
    err = Console(stderr=True)
    if dry_run:
        plan = {"action": action, "selector": selector, "ladder": list(LADDERS[action]), "nodes": nodes}
        ladder = " → ".join(LADDERS[action])
        text = f"dry run: would {action} {len(nodes)} node(s) ({ladder}), nothing submitted: {', '.join(nodes)}"
        click.echo(json.dumps(plan) if as_json else text)
        return
    settings = nats_auth.settings(
        url=url or "", prefix=prefix, stream_prefix=stream_prefix, bucket_prefix=bucket_prefix
    )
    bucket = settings.topology().bucket(f"{bucket_prefix}-inventory").name
    the_batch = Batch(batch_id=batch_id, action=action, selector=selector, cluster=cluster or "", nodes={})

    async def body() -> Batch:
        nc = await connect(settings, name="nodeheal-batch")
        try:
            try:
                known = await inventory_clusters(nc.jetstream(), bucket=bucket)
            except NotFoundError as exc:
                msg = f"inventory bucket {bucket} not found: run `nodeheal streams apply`, or pass --bucket-prefix"
                raise click.ClickException(msg) from exc
            the_batch.cluster = check_cluster(cluster, nodes, known, bucket=bucket)
            if action == "uncordon" and not force:
                held = await live_holds(
                    nc.jetstream(),
                    control_bucket=settings.topology().bucket(f"{bucket_prefix}-control").name,
                    leases_bucket=settings.topology().bucket(f"{bucket_prefix}-leases").name,
                    cluster=the_batch.cluster,
                    nodes=nodes,
                    own_episode=lambda node: episode_of(batch_id, action, node),
                    own_diagnosis=lambda node: diagnosis_id_of(batch_id, action, node),
                )
                if held:
                    lines = "\n".join(f"  {node}: {why}" for node, why in sorted(held.items()))
                    msg = (
                        f"{len(held)} of the {len(nodes)} node(s) are held by a live ladder, which uncordons them "
                        f"itself when it is done (or hands them to a person):\n{lines}\nnothing submitted; narrow "
                        "--selector to leave them out, or pass --force to uncordon them anyway (it undoes that "
                        "ladder's cordon)"
                    )
                    raise click.ClickException(msg)
            the_batch.nodes = {n: NodeState(n) for n in nodes}
            click.echo(f"batch {batch_id}: {action} on {len(nodes)} node(s) matching {selector!r}", err=True)
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as progress:
                return await run_batch(
                    nc.jetstream(),
                    the_batch,
                    max_parallel=max_parallel,
                    reason=reason,
                    prefix=prefix,
                    stream_prefix=stream_prefix,
                    since=since,
                    progress=progress,
                )
        finally:
            await nc.close()

    try:
        run(body)
    except KeyboardInterrupt:
        chosen = the_batch.cluster or cluster
        click.echo(
            f"interrupted; the nodes already submitted go on. Resume with:\n  nodeheal batch {action} "
            f"--selector {selector!r}" + (f" --cluster {chosen}" if chosen else "") + f" --resume {batch_id}",
            err=True,
        )
        raise SystemExit(130) from None
    if as_json:
        click.echo(json.dumps(the_batch.report(), sort_keys=True))
    else:
        print_summary(the_batch, console=Console())
    counts = the_batch.counts()
    if counts["failed"] or counts["skipped"]:
        raise SystemExit(1)
