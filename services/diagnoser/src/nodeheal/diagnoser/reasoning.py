"""The diagnoser's core, without the transport: feed it anomalies, cloud events, audit records and
inventory; ask it which diagnoses and fleet findings to publish. The service (handlers.py), replay and
tests drive the same object. Every id it hands out is deterministic, so a redelivered input can never
produce a second, different message.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nodeheal.diagnoser.correlation import CorrelationConfig, FleetEvent, down_spikes, outliers
from nodeheal.diagnoser.crash import CrashVerdict, bucket_key
from nodeheal.diagnoser.kb import Matcher, analyse
from nodeheal.diagnoser.kb.signature import signature_identified
from nodeheal.diagnoser.kpi import FleetKpis, fleet_kpis, is_crash
from nodeheal.diagnoser.rules import SILENT_KINDS, Decision, DecisionConfig, decide, partition_view
from nodeheal.diagnoser.state import CrashFact, FleetState, KernelEvidence, NodeContext, Published, node_key
from nodeheal.diagnoser.trend import FLEET_GROUP, TimedEvent, TrendConfig, one_per_rise, sudden_rises
from nodeheal.schemas.anomaly import Anomaly, Evidence
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import CrashSignature, Diagnosis, FleetCorrelation, RecommendedAction
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.inventory import NodeInventory

CRASH_EPISODE_KEY = "crash_report"
PLANNED_REBOOT = "planned_reboot"
"""anomaly_key part of the episode a hardware crash report opens when nothing fires on its node"""
CRASH_EVIDENCE_MAX_AGE = timedelta(minutes=10)
"""A crash report's evidence counts as this old at most when it is found (kernel look-back: 30 min)."""


UNEXPLAINED_REBOOT = "unexplained_reboot"


@dataclass(frozen=True, slots=True)
class DiagnoserConfig:
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    correlation: CorrelationConfig = field(default_factory=CorrelationConfig)
    node_down_hold: timedelta = timedelta(seconds=60)
    """a lone dark node's verdict waits this long after its anomaly was detected: longer than the gap
    between the first two dark nodes of a rack that goes dark port by port (tens of seconds), well
    inside the 5-minute "know why" budget"""
    domain_quiet: timedelta = timedelta(seconds=15)
    """a rack / zone is still going dark while its dark nodes arrive less than this apart"""
    domain_hold_max: timedelta = timedelta(seconds=240)
    """the longest a node_down verdict waits for its rack / zone to stop going dark"""
    domain_hold_min_dark: tuple[tuple[str, int], ...] = (("rack", 2), ("zone", 3))
    """how many dark nodes, arriving less than `domain_quiet` apart, make a domain hold its verdicts"""
    crash_report_wait: timedelta = timedelta(seconds=10)
    """an unexpected reboot nothing explains yet waits this long after it was detected before it is said
    to be `unexplained_reboot`: the node's agent sends its crash report (pstore / kdump) at the same
    start as its first probe, and the two travel different streams"""
    correlation_window: timedelta = timedelta(hours=24)
    trend: TrendConfig = field(default_factory=TrendConfig)
    # hysteresis: a finding whose test no longer passes is cleared only after it stayed absent this long
    finding_clear_after: timedelta = timedelta(minutes=10)
    replay: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    diagnosis: Diagnosis | None = None
    hold_until: datetime | None = None


def kernel_lines(anomaly: Anomaly) -> list[tuple[datetime, list[str]]]:
    """The raw kernel lines of a kernel_fault anomaly: `Evidence.details["lines"]` (a list of strings)
    or, failing that, a string `Evidence.value` of kernel-log evidence."""
    out: list[tuple[datetime, list[str]]] = []
    for evidence in anomaly.evidence:
        at = evidence.observed_at or anomaly.fault_onset
        lines = evidence.details.get("lines")
        if isinstance(lines, list) and lines and all(isinstance(x, str) for x in lines):
            out.append((at, [str(x) for x in lines]))
        elif isinstance(evidence.value, str) and (evidence.kind == "kernel_log" or anomaly.kind == "kernel_fault"):
            out.append((at, evidence.value.splitlines()))
    return out


class Diagnoser:
    def __init__(self, *, matcher: Matcher, config: DiagnoserConfig | None = None) -> None:
        self.matcher = matcher
        self.config = config or DiagnoserConfig()
        self.fleet = FleetState()
        self._rank = {name: info.rank for name, info in matcher.kb.classes.items()}
        self.crash_dirty: set[str] = set()  # nodes whose crash history must be saved (durable.py)
        # episodes the rebuild saw fire and end (durable.py): node key, the episode's firing anomalies, when it ended
        self.ended: list[tuple[str, tuple[Anomaly, ...], datetime]] = []

    # ------------------------------------------------------------------ inputs

    def on_inventory(self, record: NodeInventory) -> set[str]:
        """Remember a node's inventory; the node keys whose verdict may change because of it. A dark node that
        moves to another rack or zone changes its own partition view and those of the judged dark peers of the
        place it left and of the place it joins: the same bounded set an arrival revisits
        (`FleetState.judged_to_revisit`), taken at both places. Anything else changes no verdict."""
        key = node_key(record.cluster, record.node)
        fleet = self.fleet
        moved = key in fleet.dark_at and any(
            fleet.domain_of(key, dimension) != (str(value) if (value := getattr(record, dimension, None)) else None)
            for dimension in ("rack", "zone")
        )
        if not moved:  # most changes (labels, readiness, cordons) move nothing: no revisit is worked out
            fleet.put_inventory(key, record)
            return set()
        decision = self.config.decision

        def peers() -> set[str]:
            return fleet.judged_to_revisit(
                key, zone_min_down=decision.zone_min_down, zone_min_fraction=decision.zone_min_fraction
            )

        left = peers()
        fleet.put_inventory(key, record)
        return {key} | left | peers()

    def forget_inventory(self, cluster: str, node: str) -> None:
        self.fleet.drop_inventory(node_key(cluster, node))

    def on_cloud_event(self, event: CloudSystemEvent) -> set[str]:
        ctx = self.fleet.context(event.cluster, event.node)
        ctx.add_cloud_event(event)
        return {ctx.key}

    def on_audit(self, record: RemediationRecord) -> set[str]:
        ctx = self.fleet.context(record.cluster, record.node)
        if all(r.id != record.id for r in ctx.remediation):
            ctx.remediation.append(record)
        return {ctx.key}

    def on_anomaly(self, anomaly: Anomaly) -> set[str]:
        """Remember the anomaly; the node keys whose diagnosis may change because of it."""
        ctx = self.fleet.context(anomaly.cluster, anomaly.node)
        if not ctx.add_anomaly(anomaly):
            return set()
        touched = {ctx.key}
        if anomaly.status == "firing" and anomaly.kind == "kernel_fault":
            self._add_kernel(ctx, anomaly)
        if anomaly.kind in SILENT_KINDS:
            if anomaly.status == "firing" and not anomaly.expected and ctx.is_firing(anomaly):
                self.fleet.mark_dark(ctx.key, onset=anomaly.fault_onset, detected_at=anomaly.detected_at)
                # peers already judged may now be part of a rack / zone burst; peers still held are
                # revisited when their hold ends (which then sees this node): not touched here, so a
                # zone of thousands going dark costs O(n), not O(n^2), evaluations. Of the judged peers,
                # only those this arrival can move into a partition (`FleetState.judged_to_revisit`)
                decision = self.config.decision
                touched |= self.fleet.judged_to_revisit(
                    ctx.key, zone_min_down=decision.zone_min_down, zone_min_fraction=decision.zone_min_fraction
                )
                # the arrival that makes the burst a partition releases every verdict held in it (once)
                found = partition_view(self.fleet, ctx, now=anomaly.detected_at, config=self.config.decision)
                if found is not None and (found[1].dimension, found[1].value) not in self.fleet.released:
                    self.fleet.released.add((found[1].dimension, found[1].value))
                    nodes = self.fleet.nodes
                    touched |= {k for k in found[1].down if k in nodes and _unjudged(nodes[k].published)}
            elif anomaly.status == "resolved" and not any(a.kind in SILENT_KINDS for a in ctx.firing.values()):
                self.fleet.clear_dark(ctx.key)
        return touched

    def hold_until(self, ctx: NodeContext, silent: list[Anomaly]) -> datetime:
        """When a node_down / node_hang verdict may be given. A lone dark node waits `node_down_hold`.
        While its rack or zone keeps going dark (at least `domain_hold_min_dark` dark nodes, each
        arriving less than the domain's gap after the one before: `node_down_hold` in a rack, whose
        ports may go one by one tens of seconds apart, `domain_quiet` in a zone) it waits until the
        domain has been quiet for `domain_quiet`, so the whole set is judged together — at most
        `domain_hold_max` after it went dark. Times are the anomalies' `detected_at`, so a restarted
        diagnoser computes the same hold."""
        config = self.config
        first_seen = self.fleet.dark_at.get(ctx.key) or min(a.detected_at for a in silent)
        until = first_seen + config.node_down_hold
        for dimension, min_dark in config.domain_hold_min_dark:
            gap = max(config.domain_quiet, config.node_down_hold) if dimension == "rack" else config.domain_quiet
            run = self.fleet.dark_run(ctx.key, dimension, gap=gap)
            if run is not None and run[0] >= min_dark:
                until = max(until, run[1] + config.domain_quiet)
        return min(until, first_seen + config.domain_hold_max)

    def _add_kernel(self, ctx: NodeContext, anomaly: Anomaly) -> None:
        for at, lines in kernel_lines(anomaly):
            result = analyse(lines, matcher=self.matcher)
            for finding in result.findings:
                ctx.kernel.append(
                    KernelEvidence(
                        observed_at=at, finding=finding, signature=result.signature_of(finding), anomaly_id=anomaly.id
                    )
                )
            seen: set[str] = set()
            for report in result.reports:
                signature = report.signature()
                if signature.bucket in seen:
                    continue
                seen.add(signature.bucket)
                self._add_crash(ctx, at, signature)

    def on_crash(self, verdict: CrashVerdict, record: dict[str, Any]) -> set[str]:
        """A node's crash report, classified and counted in its bucket's fleet record: its findings join
        the node's kernel evidence (so the episode that fires on the node — the unexpected reboot, the
        node that went dark — is explained by it), its signature the node's crash history, and the
        report itself, with its bucket's record, decides the ladder (rules.crash_bucket_decision).
        Returns the node keys to evaluate."""
        ctx = self.fleet.context(verdict.cluster, verdict.node)
        if any(c.report_id == verdict.report_id for c in ctx.crash_reports):
            return set()  # redelivered
        reported = verdict.reported_at or verdict.at
        at = verdict.at or reported
        if at is None:
            return set()
        if reported is not None:
            # a node that stayed dark a long time reports an old crash: it still explains this boot's episode
            at = max(at, reported - CRASH_EVIDENCE_MAX_AGE)
        if verdict.cls is not None:
            ctx.crash_reports.append(
                CrashFact(
                    at=at,
                    report_id=verdict.report_id,
                    cls=verdict.cls,
                    hardware=verdict.hardware is not None,
                    bucket=str(record.get("bucket") or bucket_key(verdict)),
                    signature=verdict.signature,
                    count=int(record.get("count", 1)),
                    node_count=int(record.get("node_count", 1)),
                    kernels=tuple(record.get("kernels", ())),
                    machine_models=tuple(record.get("machine_models", ())),
                    first_seen=record.get("first_seen"),
                    last_seen=record.get("last_seen"),
                    evidence_path=verdict.evidence_path,
                )
            )
        for finding in (verdict.hardware, verdict.finding):
            if finding is not None and all(
                not (k.anomaly_id == verdict.report_id and k.finding == finding) for k in ctx.kernel
            ):
                ctx.kernel.append(
                    KernelEvidence(
                        observed_at=at, finding=finding, signature=verdict.signature, anomaly_id=verdict.report_id
                    )
                )
        if verdict.signature is not None:
            self._add_crash(ctx, at, verdict.signature)
        said = ctx.published is not None and not ctx.published.resolved  # an open episode already took it
        if verdict.hardware is not None and verdict.cls is not None and not ctx.firing and not said:
            self._open_crash_episode(ctx, verdict, at=at, reported=reported or at)
        if verdict.cls is not None and verdict.report_id not in self.fleet.crash_counted:
            # every crash counts towards the fleet rates once: here, until a diagnosis of the episode it
            # explains counts it instead (`_record_fault`); alone when no episode is open (our own reboot
            # brought the node back, so nothing fires)
            self._count_fault(
                ctx.key,
                episode=f"crash:{verdict.report_id}",
                category="hardware" if verdict.hardware is not None else verdict.category,
                bucket=_fleet_bucket(verdict.signature),
                at=at,
            )
        return {ctx.key}

    def _open_crash_episode(self, ctx: NodeContext, verdict: CrashVerdict, *, at: datetime, reported: datetime) -> None:
        """A machine that crashed on hardware came back with nothing firing (our own reboot of the dark
        node brought it back, so the detector raised no unexpected_reboot): the crash report opens the
        episode itself — a firing `kernel_fault` of the class, keyed `<node>/crash_report/<boot>` — so
        the machine is still taken out. It ends with our retire / replace (`_close_crash_episode`)."""
        ctx.add_anomaly(
            Anomaly.model_validate(
                {
                    "id": deterministic_id("crash-report", verdict.report_id, prefix="anomaly-"),
                    "time": reported,
                    "cluster": ctx.cluster,
                    "node": ctx.node,
                    "anomaly_key": f"{ctx.key}/{CRASH_EPISODE_KEY}/{verdict.boot_id}",
                    "kind": "kernel_fault",
                    "status": "firing",
                    "severity": "critical",
                    "subject": verdict.cls,
                    "fault_onset": at,
                    "detected_at": reported,
                    "evidence": (
                        Evidence(
                            kind="crash_report",
                            summary=f"crash report {verdict.report_id}: {verdict.cls} (hardware) after the reboot",
                            value=verdict.cls,
                            ref=verdict.report_id,
                            observed_at=at,
                        ),
                    ),
                }
            )
        )

    def _close_crash_episode(self, ctx: NodeContext, *, now: datetime) -> None:
        """The crash report's own episode ends once the machine was retired (or the crash left the window)."""
        keys = [k for k in ctx.firing if f"/{CRASH_EPISODE_KEY}/" in k]
        if keys and not self._hardware_crash_open(ctx, now=now):
            for key in keys:
                del ctx.firing[key]

    def _hardware_crash_open(self, ctx: NodeContext, *, now: datetime) -> bool:
        """A hardware crash of the node in the crash window, and no retire / replace of ours since."""
        horizon = now - self.config.decision.crash_window
        crash = max((c.at for c in ctx.crash_reports if c.hardware and c.at >= horizon), default=None)
        if crash is None:
            return False
        return not any(
            r.action in {"retire", "replace"} and r.phase in {"succeeded", "verified"} and r.time >= crash
            for r in ctx.remediation
        )

    def _crash_counted_by(self, evidence: Iterable[Evidence]) -> None:
        """A diagnosis explained by a crash report counts that crash: its stand-alone count goes."""
        for item in evidence:
            if item.kind == "crash_report" and item.ref:
                self.fleet.crash_counted[item.ref] = item.observed_at or datetime.now(tz=UTC)
                for key in [k for k in self.fleet.fault_events if k.startswith(f"crash:{item.ref}|")]:
                    del self.fleet.fault_events[key]

    def _add_crash(self, ctx: NodeContext, at: datetime, signature: CrashSignature) -> None:
        if any(t == at and s.bucket == signature.bucket for t, s in ctx.crashes):
            return  # the same report, from the crash bucket and from the replayed anomaly
        ctx.crashes.append((at, signature))
        if len(ctx.crashes) > 1 and ctx.crashes[-2][0] > at:
            ordered = sorted(ctx.crashes, key=lambda x: x[0])
            ctx.crashes.clear()
            ctx.crashes.extend(ordered)
        if signature_identified(signature):  # a bucket without identity is no bug shared across hosts
            hosts = self.fleet.bucket_hosts.setdefault(signature.bucket, {})
            hosts[ctx.key] = max(at, hosts.get(ctx.key, at))
        self.crash_dirty.add(ctx.key)

    # ------------------------------------------------------------------ restart (durable.py)

    def restore_crashes(self, cluster: str, node: str, history: list[tuple[datetime, CrashSignature]]) -> None:
        ctx = self.fleet.context(cluster, node)
        for at, signature in history:
            self._add_crash(ctx, at, signature)

    def restore_anomaly(self, anomaly: Anomaly) -> None:
        """An anomaly read back from the stream: state only. An episode ends where the live service
        would have ended it (every anomaly of the node resolved)."""
        ctx = self.fleet.nodes.get(node_key(anomaly.cluster, anomaly.node))
        before = dict(ctx.firing) if ctx is not None else {}
        self.on_anomaly(anomaly)
        ctx = self.fleet.nodes.get(node_key(anomaly.cluster, anomaly.node))
        if ctx is not None and not ctx.firing:
            if before and anomaly.status == "resolved":
                # the episode ended: kept, with its firing anomalies, for `recovered_verdicts`
                ids = set(ctx.episode_ids)
                fired = tuple(a for a in ctx.anomalies if a.status == "firing" and a.id in ids)
                self.ended.append((ctx.key, fired or tuple(before.values()), anomaly.detected_at))
            ctx.episode_ids = []

    def restore_published(self, key: str, last: Diagnosis) -> None:
        """The last diagnosis we published for a node: the episode keeps its id, an unchanged verdict is
        not published again."""
        ctx = self.fleet.nodes.get(key) or self.fleet.context(last.cluster, last.node)
        fingerprint = _fingerprint(last)
        if not last.resolved and key in self.fleet.dark_at and last.category != "network":
            self.fleet.judge_dark(key)
        ctx.published = Published(
            diagnosis_id=last.id,
            cause=last.cause,
            category=last.category,
            anomaly_ids=last.anomaly_ids,
            resolved=last.resolved,
            fingerprint=fingerprint + "|resolved" if last.resolved else fingerprint,
        )
        if not last.resolved:
            known = {a.id for a in ctx.anomalies}
            if known.isdisjoint(last.anomaly_ids):
                # the episode began before the look-back: nothing to judge it on; leave it as said
                ctx.published = dataclasses.replace(ctx.published, stale=True)
                return
            ids = list(last.anomaly_ids)
            ids += [i for i in ctx.episode_ids if i not in ids]
            ctx.episode_ids = ids

    def restore_fault_event(self, diagnosis: Diagnosis) -> None:
        """A published diagnosis counted towards the fleet rates exactly as when it was published."""
        if (diagnosis.resolved and not diagnosis.recovered) or not diagnosis.anomaly_ids:
            return  # a resolution repeats its episode's verdict (counted once); a recovered verdict is its only one
        ctx = self.fleet.context(diagnosis.cluster, diagnosis.node)
        if diagnosis.category in {"kernel", "hardware"}:
            self._crash_counted_by(diagnosis.evidence)
        if is_crash(diagnosis):  # the fleet crash rate (KPIs)
            self.fleet.crash_episodes.setdefault(
                diagnosis.anomaly_ids[0], diagnosis.fault_onset or diagnosis.identified_at
            )
        self._count_fault(
            ctx.key,
            episode=diagnosis.anomaly_ids[0],
            category=diagnosis.category,
            bucket=_fleet_bucket(diagnosis.crash_signature),
            at=diagnosis.fault_onset or diagnosis.identified_at,
        )

    def restore_finding(self, finding: FleetFinding) -> None:
        if finding.kind == "new_crash_bucket":
            return  # a notice, not a risk: nothing to clear (its "once" is in the bucket's KV record)
        key = (finding.kind, finding.dimension, finding.value, finding.scope)
        if finding.cleared:
            self.fleet.findings.pop(key, None)
        else:
            self.fleet.findings[key] = finding

    def recovered_verdicts(self, said: set[str], *, now: datetime) -> list[Diagnosis]:
        """The verdicts of episodes that fired and ended while no diagnoser ran (the rebuild saw both ends;
        `said`: every anomaly id a diagnosis in DIAGNOSES names). A live service would have said them: each is
        judged as it stood at the last moment a live service would have judged it (`_last_verdict_moment`: what
        fired then, with the crash reports and kernel lines known now) and said once, `resolved` and
        `recovered` — the node is back, so the remediator does nothing (a resolved diagnosis only settles what
        a ladder left behind). Its crash counts towards the fleet rates
        once: the diagnosis takes over the stand-alone count of its crash report, as a live one does. Skipped:
        an episode a diagnosis names (said before the restart, or a recovered verdict of an earlier restart);
        one a live service would not have judged either (it ended inside its node_down hold, its crash-report
        wait or its planned grace); one whose crash report opened a new episode of the node (the machine is
        taken out: that live verdict stands for the crash)."""
        out: list[Diagnosis] = []
        ended, self.ended = self.ended, []
        dark = self._dark_while_unseen(ended)
        try:
            for key, fired, ended_at in ended:
                self._recovered_verdict(key, fired, ended_at, said, now=now, out=out)
        finally:
            for key in dark:  # back, as they are now
                self.fleet.clear_dark(key)
        return out

    def _dark_while_unseen(self, ended: list[tuple[str, tuple[Anomaly, ...], datetime]]) -> list[str]:
        """Index the nodes whose ended episode went dark (an unexpected node_down / unreachable) as dark again,
        from their onset, for the recovered verdicts: a live core judged each of them with its dark peers in
        view — a rack or zone that dropped off the network together is a partition, not one crash per node
        (`rules.partition_view` chains the onsets as live). Only nodes not dark now; undone after the verdicts."""
        marked: list[str] = []
        for key, fired, _ in ended:
            silent = [a for a in fired if a.kind in SILENT_KINDS and not a.expected]
            if not silent or key in self.fleet.dark_at or key in marked:
                continue
            self.fleet.mark_dark(
                key, onset=min(a.fault_onset for a in silent), detected_at=min(a.detected_at for a in silent)
            )
            marked.append(key)
        return marked

    def _recovered_verdict(
        self,
        key: str,
        fired: tuple[Anomaly, ...],
        ended_at: datetime,
        said: set[str],
        *,
        now: datetime,
        out: list[Diagnosis],
    ) -> None:
        """One ended episode's recovered verdict into `out` (`recovered_verdicts`), if a live core said one."""
        ctx = self.fleet.nodes.get(key)
        if ctx is None or not fired or not said.isdisjoint(a.id for a in fired):
            return
        moment = self._last_verdict_moment(ctx, fired, ended_at)
        if moment is None:
            return  # it ended inside its holds: a live service would not have said it either
        at, standing = moment
        firing, episode_ids, published = ctx.firing, ctx.episode_ids, ctx.published
        ctx.firing = {a.anomaly_key: a for a in sorted(standing, key=lambda a: a.fault_onset)}
        ctx.episode_ids = [a.id for a in fired]
        ctx.published = None
        try:
            decision = decide(ctx=ctx, fleet=self.fleet, now=at, config=self.config.decision, rank=self._rank)
            if decision is None or (decision.hold_until is not None and ended_at <= decision.hold_until):
                return
            opened = {
                e.ref
                for a in firing.values()
                if f"/{CRASH_EPISODE_KEY}/" in a.anomaly_key
                for e in a.evidence
                if e.kind == "crash_report"
            }
            if any(e.kind == "crash_report" and e.ref in opened for e in decision.evidence):
                return
            live = self._diagnosis(ctx, decision, self._correlation_for(ctx, decision), now=now)
            diagnosis = live.model_copy(
                update={
                    "id": deterministic_id(live.id, "recovered", prefix="diag-"),
                    "resolved": True,
                    "recovered": True,
                    "ended_at": ended_at,
                    "recommended": (
                        RecommendedAction(
                            action="none",
                            reason=f"the episode ended at {ended_at.isoformat()}, before any diagnoser saw it:"
                            " the node has recovered, nothing is done",
                        ),
                    ),
                }
            )
            self._record_fault(ctx, decision, now=at)
            if is_crash(diagnosis):
                self.fleet.crash_episodes.setdefault(ctx.episode_ids[0], decision.fault_onset or at)
            said |= set(diagnosis.anomaly_ids)
            out.append(diagnosis)
        finally:
            ctx.firing, ctx.episode_ids, ctx.published = firing, episode_ids, published

    def _last_verdict_moment(
        self, ctx: NodeContext, fired: tuple[Anomaly, ...], ended_at: datetime
    ) -> tuple[datetime, list[Anomaly]] | None:
        """The last moment of an ended episode at which a live service would have given a verdict, and what
        fired then: a moment when something fired and nothing firing was still inside its hold (the node_down
        hold, the crash-report wait); the candidates are the ends of the holds and the moment before the
        episode ended. None when there was no such moment."""

        def end(anomaly: Anomaly) -> datetime:
            ends = [
                a.detected_at
                for a in ctx.anomalies
                if a.status == "resolved"
                and a.anomaly_key == anomaly.anomaly_key
                and a.fault_onset >= anomaly.fault_onset
            ]
            return min(ends, default=ended_at)

        spans = [(a, a.detected_at, end(a), self._judged_at(a)) for a in fired]
        last = ended_at - timedelta(microseconds=1)
        for moment in sorted({last} | {j for _, _, _, j in spans if j < ended_at}, reverse=True):
            standing = [(a, j) for a, start, stop, j in spans if start <= moment < stop]
            if standing and all(j <= moment for _, j in standing):
                return moment, [a for a, _ in standing]
        return None

    def _judged_at(self, anomaly: Anomaly) -> datetime:
        """The earliest a live service gives a first verdict on this anomaly (`evaluate`'s holds)."""
        if anomaly.kind in SILENT_KINDS and not anomaly.expected:
            return anomaly.detected_at + self.config.node_down_hold
        if anomaly.kind == "unexpected_reboot":
            return anomaly.detected_at + self.config.crash_report_wait
        return anomaly.detected_at

    def open_nodes(self) -> set[str]:
        """Nodes to evaluate after a rebuild: something fires, or an episode we spoke about is open."""
        return {
            key
            for key, ctx in self.fleet.nodes.items()
            if ctx.firing or (ctx.published is not None and not ctx.published.resolved and not ctx.published.stale)
        }

    # ------------------------------------------------------------------ decisions

    def evaluate(self, key: str, *, now: datetime) -> Outcome:
        """The diagnosis to publish for a node now (None when nothing changed), or when to look again."""
        ctx = self.fleet.nodes.get(key)
        if ctx is None:
            return Outcome()
        ctx.prune(now=now, keep=max(self.config.decision.crash_window, self.config.correlation_window))
        self._close_crash_episode(ctx, now=now)
        if not ctx.firing:
            if self.machine_out_pending(ctx, now=now):
                return Outcome()  # the machine came back, but it crashed on hardware: not over until retired
            return Outcome(diagnosis=self._resolved(ctx, now=now))
        silent = [a for a in ctx.firing.values() if a.kind in SILENT_KINDS and not a.expected]
        if silent and _unjudged(ctx.published):
            # the node_down hold: give the peers of a rack / zone burst a moment to arrive (also to a node whose
            # last episode resolved: before, such a node was judged at once, a `node_crash` at the start of a
            # rack going dark port by port)
            hold_until = self.hold_until(ctx, silent)
            # once its rack / zone burst is a partition already, waiting cannot change the verdict
            # (the burst only grows): judged now, later arrivals join it as they come
            if now < hold_until and partition_view(self.fleet, ctx, now=now, config=self.config.decision) is None:
                return Outcome(hold_until=hold_until)
        decision = decide(ctx=ctx, fleet=self.fleet, now=now, config=self.config.decision, rank=self._rank)
        if decision is None:
            return Outcome()
        if decision.hold_until is not None and now < decision.hold_until:
            return Outcome(hold_until=decision.hold_until)  # an orderly shutdown's downtime (`planned_grace`)
        if decision.cause == UNEXPLAINED_REBOOT and (ctx.published is None or ctx.published.resolved):
            # the crash report of that boot may be a moment behind the reboot: a first verdict waits for it
            # (from the anomaly's own time, so a restarted diagnoser waits the same)
            reboots = [a.detected_at for a in ctx.firing.values() if a.kind == "unexpected_reboot"]
            until = min(reboots, default=now) + self.config.crash_report_wait
            if now < until:
                return Outcome(hold_until=until)
        last = ctx.published
        if decision.cause == PLANNED_REBOOT and last is not None and not last.resolved and last.cause != PLANNED_REBOOT:
            # the downtime of our own action inside an open episode changes nothing about what is wrong
            # with the node: the verdict stands (the remediator is verifying its action). Saying
            # "planned_reboot" would supersede the ladder, and the verdict said again when the node is
            # back has the first one's id — dropped as a duplicate — so the ladder ended at "none".
            return Outcome()
        correlation = self._correlation_for(ctx, decision)
        diagnosis = self._diagnosis(ctx, decision, correlation, now=now)
        fingerprint = _fingerprint(diagnosis)
        if ctx.published is not None and ctx.published.fingerprint == fingerprint and not ctx.published.resolved:
            return Outcome()
        ctx.published = Published(
            diagnosis_id=diagnosis.id,
            cause=diagnosis.cause,
            category=diagnosis.category,
            anomaly_ids=diagnosis.anomaly_ids,
            resolved=False,
            fingerprint=fingerprint,
        )
        self._record_fault(ctx, decision, now=now)
        # a dark node judged as anything but the network may yet turn out to be part of a burst
        if ctx.key in self.fleet.dark_at and decision.category != "network":
            self.fleet.judge_dark(ctx.key)
        else:
            self.fleet.unjudge_dark(ctx.key)
        if is_crash(diagnosis):
            episode = ctx.episode_ids[0] if ctx.episode_ids else ctx.key
            self.fleet.crash_episodes.setdefault(episode, decision.fault_onset or now)
        return Outcome(diagnosis=diagnosis)

    def machine_out_pending(self, ctx: NodeContext, *, now: datetime) -> bool:
        """The node's open episode is a crash on a hardware class (its diagnosis says take the machine
        out) and no `retire` / `replace` of ours has succeeded since: the episode stays open when the
        reboot's anomalies resolve, so the remediator's rotation ladder is not ended by the machine
        coming back. Ends with the retirement (the audit record) or after the crash window."""
        last = ctx.published
        if last is None or last.resolved or last.category != "hardware":
            return False
        return self._hardware_crash_open(ctx, now=now)

    def kpis(self, *, now: datetime, window: timedelta = timedelta(days=1)) -> FleetKpis:
        """Crash, schedulable and online rate of the fleet as the diagnoser sees it now."""
        horizon = now - max(window, self.config.correlation_window)
        for episode in [e for e, t in self.fleet.crash_episodes.items() if t < horizon]:
            del self.fleet.crash_episodes[episode]
        return fleet_kpis(
            inventory=self.fleet.inventory,
            down=self.fleet.down_since.keys(),
            crash_times=self.fleet.crash_episodes.values(),
            now=now,
            window=window,
            ready_schedulable=self.fleet.ready_schedulable,
        )

    def _resolved(self, ctx: NodeContext, *, now: datetime) -> Diagnosis | None:
        last = ctx.published
        ctx.episode_ids = []
        if last is None or last.resolved:
            return None
        ctx.published = Published(
            diagnosis_id=deterministic_id(last.diagnosis_id, "resolved", prefix="diag-"),
            cause=last.cause,
            category=last.category,
            anomaly_ids=last.anomaly_ids,
            resolved=True,
            fingerprint=last.fingerprint + "|resolved",
        )
        return Diagnosis.model_validate(
            {
                "id": ctx.published.diagnosis_id,
                "cluster": ctx.cluster,
                "node": ctx.node,
                "anomaly_ids": last.anomaly_ids,
                "category": last.category,
                "cause": last.cause,
                "confidence": 1.0,
                "identified_at": now,
                "time": now,
                "resolved": True,
                "recommended": [{"action": "none", "reason": "every anomaly behind the diagnosis has resolved"}],
                "replay": self.config.replay,
            }
        )

    def _diagnosis(
        self, ctx: NodeContext, decision: Decision, correlation: FleetCorrelation | None, *, now: datetime
    ) -> Diagnosis:
        anomaly_ids = tuple(ctx.episode_ids) or tuple(a.id for a in ctx.firing.values())
        kinds = tuple(sorted({a.kind for a in ctx.firing.values()}))
        episode = ctx.episode_ids[0] if ctx.episode_ids else anomaly_ids[0]
        own = {a.id for a in ctx.anomalies if f"/{CRASH_EPISODE_KEY}/" in a.anomaly_key}
        diagnosis_id = deterministic_id(
            ctx.key,
            episode,
            decision.cause,
            decision.category,
            ",".join(r.action for r in decision.recommended),
            correlation.finding_id if correlation else "",
            # said again, under another id, once the first real anomaly joins a crash report's episode
            *(("report-only",) if set(anomaly_ids) <= own else ()),
            prefix="diag-",
        )
        evidence = list(decision.evidence)
        if correlation is not None:
            evidence.insert(
                0,
                _fleet_evidence(correlation),
            )
        return Diagnosis(
            id=diagnosis_id,
            cluster=ctx.cluster,
            node=ctx.node,
            time=now,
            anomaly_ids=anomaly_ids,
            anomaly_kinds=kinds,
            category=decision.category,
            cause=decision.cause,
            confidence=round(decision.confidence, 3),
            evidence=tuple(evidence),
            kernel_classes=decision.kernel_classes,
            crash_signature=decision.crash_signature,
            fleet_correlation=correlation,
            recommended=decision.recommended,
            fault_onset=decision.fault_onset or min(a.fault_onset for a in ctx.firing.values()),
            identified_at=now,
            replay=self.config.replay,
            episode_id=episode,
        )

    # ------------------------------------------------------------------ fleet correlation

    def _record_fault(self, ctx: NodeContext, decision: Decision, *, now: datetime) -> None:
        """Crashes and kernel / hardware faults count towards the fleet rates (one per node episode).

        A diagnosis that changes its mind to the network (a lone node_down first read as a crash, then
        as part of a rack partition) takes the episode's events back, so a partition never becomes a
        crash-rate finding.
        """
        episode = ctx.episode_ids[0] if ctx.episode_ids else ctx.key
        bucket = _fleet_bucket(decision.crash_signature)
        if decision.category in {"kernel", "hardware"}:
            self._crash_counted_by(decision.evidence)
        self._count_fault(
            ctx.key, episode=episode, category=decision.category, bucket=bucket, at=decision.fault_onset or now
        )

    def _count_fault(self, key: str, *, episode: str, category: str, bucket: str | None, at: datetime) -> None:
        if category == "network":
            for event in [k for k in self.fleet.fault_events if k.startswith(f"{episode}|")]:
                del self.fleet.fault_events[event]
            return
        if category not in {"kernel", "hardware"}:
            return  # e.g. the downtime of our own reboot after the crash: the crash still counts
        scopes = ["any", f"category:{category}"]
        if bucket is not None:
            scopes.append(f"bucket:{bucket}")
        for scope in scopes:
            self.fleet.fault_events[f"{episode}|{scope}"] = (key, scope, at)

    def _correlation_for(self, ctx: NodeContext, decision: Decision) -> FleetCorrelation | None:
        best: FleetFinding | None = None
        for finding in self.fleet.findings.values():
            if finding.kind != "rate_outlier" or finding.cleared or ctx.key not in finding.affected_nodes:
                continue
            if finding.signature_bucket and (
                decision.crash_signature is None or decision.crash_signature.bucket != finding.signature_bucket
            ):
                continue
            if best is None or finding.ratio > best.ratio:
                best = finding
        if best is None:
            return None
        return FleetCorrelation(
            finding_id=best.finding_id,
            dimension=best.dimension,
            value=best.value,
            group_rate=best.group_rate,
            fleet_rate=best.rest_rate,
            ratio=best.ratio,
            p_value=best.p_value if best.p_value is not None else 0.0,
            affected_nodes=len(best.affected_nodes),
            signature_bucket=best.signature_bucket,
        )

    def correlate(self, *, now: datetime, cluster: str) -> tuple[list[FleetFinding], set[str]]:
        """New or cleared fleet findings, and the node keys whose diagnosis should carry them."""
        window = self.config.correlation_window
        horizon = now - max(window, self.config.trend.horizon)
        for event_key in [k for k, (_, _, t) in self.fleet.fault_events.items() if t < horizon]:
            del self.fleet.fault_events[event_key]
        for report_id in [r for r, t in self.fleet.crash_counted.items() if t < horizon]:
            del self.fleet.crash_counted[report_id]
        events = [FleetEvent(node=n, scope=s) for n, s, t in self.fleet.fault_events.values() if t >= now - window]
        timed = [TimedEvent(node=n, scope=s, at=t) for n, s, t in self.fleet.fault_events.values()]
        rises = sudden_rises(
            events=timed, inventory=self.fleet.inventory, now=now, config=self.config.trend, groups=self.fleet.groups
        )
        flagged = outliers(
            events=events, inventory=self.fleet.inventory, config=self.config.correlation, groups=self.fleet.groups
        )
        spikes = down_spikes(
            down=self.fleet.down_since.keys(),
            inventory=self.fleet.inventory,
            config=self.config.correlation,
            groups=self.fleet.groups,
        )
        current: dict[tuple[str, str, str, str], FleetFinding] = {}
        for stat in flagged:
            bucket = stat.scope.removeprefix("bucket:") if stat.scope.startswith("bucket:") else None
            key = ("rate_outlier", stat.dimension, stat.value, stat.scope)
            current[key] = self._finding(
                key,
                now=now,
                cluster=cluster,
                group_events=stat.group_events,
                group_nodes=stat.group_nodes,
                fleet_events=stat.fleet_events,
                fleet_nodes=stat.fleet_nodes,
                group_rate=stat.group_rate,
                rest_rate=stat.rest_rate,
                ratio=stat.ratio,
                p_value=stat.p_value,
                test=f"binomial one-sided, Bonferroni over {stat.tests} groups, alpha={self.config.correlation.alpha}",
                affected_nodes=stat.affected_nodes,
                signature_bucket=bucket,
                message=(
                    f"{stat.dimension}={stat.value}: {stat.group_events} {stat.scope} faults"
                    f" on {stat.group_nodes} nodes,"
                    f" {stat.ratio:.1f}x the rest of the fleet (p={stat.p_value:.2g})"
                ),
            )
        for spike in spikes:
            key = ("down_spike", spike.dimension, spike.value, "down")
            current[key] = self._finding(
                key,
                now=now,
                cluster=cluster,
                group_events=len(spike.down_nodes),
                group_nodes=spike.group_nodes,
                fleet_events=len(self.fleet.down_since),
                fleet_nodes=len(self.fleet.inventory),
                group_rate=spike.fraction,
                rest_rate=spike.rest_fraction,
                ratio=spike.fraction / spike.rest_fraction if spike.rest_fraction > 0 else float(len(spike.down_nodes)),
                p_value=None,
                test=f"down fraction >= {self.config.correlation.spike_fraction}",
                affected_nodes=spike.down_nodes,
                signature_bucket=None,
                message=(
                    f"{len(spike.down_nodes)} of {spike.group_nodes} nodes of {spike.dimension} {spike.value}"
                    f" are down ({spike.fraction:.0%})"
                ),
            )
        trend = self.config.trend
        reported = {(k[1], k[2]): k[3] for k in self.fleet.findings if k[0] == "sudden_rise"}
        for one in one_per_rise(rises, group_size=self._group_size, reported=reported):
            rise = one.stat
            key = ("sudden_rise", rise.dimension, rise.value, one.scope)
            bucket = one.scope.removeprefix("bucket:") if one.scope.startswith("bucket:") else None
            also = "".join(
                [
                    f"; also {', '.join(one.other_scopes)}" if one.other_scopes else "",
                    (
                        f"; the same nodes as {', '.join(f'{d}={v}' for d, v in one.same_nodes_as)}"
                        if one.same_nodes_as
                        else ""
                    ),
                ]
            )
            current[key] = self._finding(
                key,
                now=now,
                cluster=cluster,
                group_events=rise.current_events,
                group_nodes=self._group_size(rise.dimension, rise.value),
                fleet_events=rise.history_events,
                fleet_nodes=len(self.fleet.inventory),
                group_rate=rise.current_events / trend.current_bins,
                rest_rate=rise.expected / trend.current_bins,
                ratio=rise.ratio,
                p_value=rise.p_value,
                test=(
                    f"poisson one-sided against its own last {trend.history_bins} bins of {trend.bin_s:g} s,"
                    f" Bonferroni over {rise.tests} groups, alpha={trend.alpha}"
                ),
                affected_nodes=rise.affected_nodes,
                signature_bucket=bucket,
                message=(
                    f"sudden rise: {rise.dimension}={rise.value}: {rise.current_events} {rise.scope} faults in the"
                    f" last {trend.bin_s * trend.current_bins:g} s, {rise.ratio:.1f}x its own recent rate"
                    f" (expected {rise.expected:.2g}, p={rise.p_value:.2g}){also}"
                ),
            )
        out: list[FleetFinding] = []
        touched: set[str] = set()
        for key in current:
            self.fleet.finding_absent_since.pop(key, None)
        for key, finding in current.items():
            if key not in self.fleet.findings:
                self.fleet.findings[key] = finding
                out.append(finding)
                if finding.kind == "rate_outlier":
                    touched |= set(finding.affected_nodes)
            else:
                # the same episode (same finding id) grew: said again with every node it has affected so far
                # (the union: a node that came back stays named, so a node going and coming never makes the
                # finding flap) and the current counts. Only growth is said, at most once per correlation run;
                # what was said is what a restart reads back (DIAGNOSES). Newly affected nodes of a rate
                # outlier get the correlation on their diagnoses too
                old = self.fleet.findings[key]
                grown = set(finding.affected_nodes) - set(old.affected_nodes)
                if not grown:
                    continue
                nodes = tuple(sorted(set(old.affected_nodes) | grown))
                update = finding.model_copy(
                    update={
                        "affected_nodes": nodes,
                        "id": deterministic_id(old.finding_id, "grown", *nodes, prefix="finding-"),
                    }
                )
                self.fleet.findings[key] = update
                out.append(update)
                if finding.kind == "rate_outlier":
                    touched |= grown
        for key in [k for k in self.fleet.findings if k not in current]:
            absent_since = self.fleet.finding_absent_since.setdefault(key, now)
            if now - absent_since < self.config.finding_clear_after:
                continue  # hysteresis: one quiet run does not end a risk
            self.fleet.finding_absent_since.pop(key, None)
            old = self.fleet.findings.pop(key)
            cleared = old.model_copy(
                update={"cleared": True, "id": deterministic_id(old.finding_id, "cleared", prefix="finding-")}
            )
            out.append(cleared)
            if old.kind == "rate_outlier":
                touched |= set(old.affected_nodes)
        return out, {k for k in touched if k in self.fleet.nodes and self.fleet.nodes[k].firing}

    def _group_size(self, dimension: str, value: str) -> int:
        if (dimension, value) == FLEET_GROUP:
            return len(self.fleet.inventory)
        return self.fleet.groups.size(dimension, value)

    def _finding(
        self, key: tuple[str, str, str, str], *, now: datetime, cluster: str, **fields: object
    ) -> FleetFinding:
        """The finding as the tests see it now; an episode already raised keeps its id and detection time."""
        existing = self.fleet.findings.get(key)
        if existing is not None:
            finding_id, detected_at = existing.finding_id, existing.detected_at
        else:
            start = now.replace(minute=0, second=0, microsecond=0)
            finding_id, detected_at = deterministic_id(*key, start.isoformat(), prefix="finding-"), now
        return FleetFinding.model_validate(
            {
                "id": finding_id,
                "finding_id": finding_id,
                "cluster": cluster,
                "time": now,
                "kind": key[0],
                "dimension": key[1],
                "value": key[2],
                "scope": key[3],
                "window_s": self.config.correlation_window.total_seconds(),
                "detected_at": detected_at,
                **fields,
            }
        )


def _fleet_evidence(correlation: FleetCorrelation) -> Evidence:
    return Evidence(
        kind="fleet",
        summary=(
            f"{correlation.dimension}={correlation.value} fails {correlation.ratio:.1f}x the rest of the fleet"
            f" (p={correlation.p_value:.2g}, {correlation.affected_nodes} nodes)"
        ),
        value=correlation.ratio,
        ref=correlation.finding_id,
    )


def _report_only(diagnosis: Diagnosis) -> bool:
    """Every anomaly the diagnosis names is a crash report's own episode (`_open_crash_episode`): the
    machine came back before any anomaly of the detector said so (e.g. the detector was restarting)."""
    own = {
        deterministic_id("crash-report", e.ref, prefix="anomaly-")
        for e in diagnosis.evidence
        if e.kind == "crash_report" and e.ref
    }
    return bool(diagnosis.anomaly_ids) and set(diagnosis.anomaly_ids) <= own


def _fingerprint(diagnosis: Diagnosis) -> str:
    """What makes a verdict new. A crash report's own episode joined by its first real anomaly (the
    detector's unexpected_reboot, late) is said once more, naming it: a reader of the streams sees the
    reboot diagnosed (same episode, verdict and ladder, so the remediator's ladder continues)."""
    parts = [
        diagnosis.cause,
        diagnosis.category,
        ",".join(r.action for r in diagnosis.recommended),
        diagnosis.fleet_correlation.finding_id if diagnosis.fleet_correlation else "",
        diagnosis.crash_signature.bucket if diagnosis.crash_signature else "",
    ]
    if _report_only(diagnosis):
        parts.append("report-only")
    return hashlib.sha1("|".join(parts).encode(), usedforsecurity=False).hexdigest()


def _fleet_bucket(signature: CrashSignature | None) -> str | None:
    """The bucket a crash counts in for the fleet's rates (`bucket:<b>` scopes): only a signature that identifies a
    bug — the bucket of one without identity (a generic panic string, a bare watchdog line) is no group of hosts."""
    return signature.bucket if signature is not None and signature_identified(signature) else None


def _unjudged(published: Published | None) -> bool:
    """No open episode stands for the node: nothing published, or its last diagnosis resolved the episode."""
    return published is None or published.resolved
