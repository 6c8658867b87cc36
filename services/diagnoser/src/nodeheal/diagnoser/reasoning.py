"""The diagnoser's core, without the transport: feed it anomalies, cloud events, audit records and
inventory; ask it which diagnoses and fleet findings to publish. The service (handlers.py), replay and
tests drive the same object. Every id it hands out is deterministic, so a redelivered input can never
produce a second, different message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nodeheal.diagnoser.correlation import CorrelationConfig, FleetEvent, down_spikes, group_value, outliers
from nodeheal.diagnoser.kb import Matcher, analyse
from nodeheal.diagnoser.kpi import FleetKpis, fleet_kpis, is_crash
from nodeheal.diagnoser.rules import SILENT_KINDS, Decision, DecisionConfig, decide
from nodeheal.diagnoser.state import FleetState, KernelEvidence, NodeContext, Published, node_key
from nodeheal.diagnoser.trend import FLEET_GROUP, TimedEvent, TrendConfig, sudden_rises
from nodeheal.schemas.anomaly import Anomaly, Evidence
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import Diagnosis, FleetCorrelation
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.inventory import NodeInventory


@dataclass(frozen=True, slots=True)
class DiagnoserConfig:
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    correlation: CorrelationConfig = field(default_factory=CorrelationConfig)
    node_down_hold: timedelta = timedelta(seconds=3)
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

    # ------------------------------------------------------------------ inputs

    def on_inventory(self, record: NodeInventory) -> None:
        self.fleet.inventory[node_key(record.cluster, record.node)] = record

    def forget_inventory(self, cluster: str, node: str) -> None:
        self.fleet.inventory.pop(node_key(cluster, node), None)

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
            if anomaly.status == "firing" and not anomaly.expected:
                self.fleet.down_since.setdefault(ctx.key, anomaly.fault_onset)
                # peers already down may now be part of a rack / zone burst
                for dimension in ("rack", "zone"):
                    touched |= {k for k in self.fleet.peers(ctx.key, dimension) if k in self.fleet.down_since}
            elif anomaly.status == "resolved" and not any(a.kind in SILENT_KINDS for a in ctx.firing.values()):
                self.fleet.down_since.pop(ctx.key, None)
        return touched

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
                ctx.crashes.append((at, signature))
                self.fleet.bucket_hosts.setdefault(signature.bucket, {})[ctx.key] = at

    # ------------------------------------------------------------------ decisions

    def evaluate(self, key: str, *, now: datetime) -> Outcome:
        """The diagnosis to publish for a node now (None when nothing changed), or when to look again."""
        ctx = self.fleet.nodes.get(key)
        if ctx is None:
            return Outcome()
        ctx.prune(now=now, keep=max(self.config.decision.crash_window, self.config.correlation_window))
        if not ctx.firing:
            return Outcome(diagnosis=self._resolved(ctx, now=now))
        silent = [a for a in ctx.firing.values() if a.kind in SILENT_KINDS and not a.expected]
        if silent and ctx.published is None:
            # the node_down hold: give the peers of a rack / zone burst a moment to arrive
            first_seen = min(a.detected_at for a in silent)
            hold_until = first_seen + self.config.node_down_hold
            if now < hold_until:
                return Outcome(hold_until=hold_until)
        decision = decide(ctx=ctx, fleet=self.fleet, now=now, config=self.config.decision, rank=self._rank)
        if decision is None:
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
        if is_crash(diagnosis):
            episode = ctx.episode_ids[0] if ctx.episode_ids else ctx.key
            self.fleet.crash_episodes.setdefault(episode, decision.fault_onset or now)
        return Outcome(diagnosis=diagnosis)

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
        diagnosis_id = deterministic_id(
            ctx.key,
            episode,
            decision.cause,
            decision.category,
            ",".join(r.action for r in decision.recommended),
            correlation.finding_id if correlation else "",
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
        )

    # ------------------------------------------------------------------ fleet correlation

    def _record_fault(self, ctx: NodeContext, decision: Decision, *, now: datetime) -> None:
        """Crashes and kernel / hardware faults count towards the fleet rates (one per node episode).

        A diagnosis that changes its mind to the network (a lone node_down first read as a crash, then
        as part of a rack partition) takes the episode's events back, so a partition never becomes a
        crash-rate finding.
        """
        episode = ctx.episode_ids[0] if ctx.episode_ids else ctx.key
        if decision.category == "network":
            for key in [k for k in self.fleet.fault_events if k.startswith(f"{episode}|")]:
                del self.fleet.fault_events[key]
            return
        if decision.category not in {"kernel", "hardware"}:
            return  # e.g. the downtime of our own reboot after the crash: the crash still counts
        at = decision.fault_onset or now
        scopes = ["any", f"category:{decision.category}"]
        if decision.crash_signature is not None:
            scopes.append(f"bucket:{decision.crash_signature.bucket}")
        for scope in scopes:
            self.fleet.fault_events[f"{episode}|{scope}"] = (ctx.key, scope, at)

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
        events = [FleetEvent(node=n, scope=s) for n, s, t in self.fleet.fault_events.values() if t >= now - window]
        timed = [TimedEvent(node=n, scope=s, at=t) for n, s, t in self.fleet.fault_events.values()]
        rises = sudden_rises(events=timed, inventory=self.fleet.inventory, now=now, config=self.config.trend)
        flagged = outliers(events=events, inventory=self.fleet.inventory, config=self.config.correlation)
        spikes = down_spikes(
            down=self.fleet.down_since.keys(), inventory=self.fleet.inventory, config=self.config.correlation
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
        for rise in rises:
            key = ("sudden_rise", rise.dimension, rise.value, rise.scope)
            bucket = rise.scope.removeprefix("bucket:") if rise.scope.startswith("bucket:") else None
            current[key] = self._finding(
                key,
                now=now,
                cluster=cluster,
                group_events=rise.current_events,
                group_nodes=sum(1 for r in self.fleet.inventory.values() if _member(r, rise.dimension, rise.value)),
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
                    f" (expected {rise.expected:.2g}, p={rise.p_value:.2g})"
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
            elif finding.kind == "rate_outlier":
                # keep the id, let the group grow: newly affected nodes get the correlation too
                old = self.fleet.findings[key]
                grown = set(finding.affected_nodes) - set(old.affected_nodes)
                if grown:
                    self.fleet.findings[key] = old.model_copy(update={"affected_nodes": finding.affected_nodes})
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

    def _finding(
        self, key: tuple[str, str, str, str], *, now: datetime, cluster: str, **fields: object
    ) -> FleetFinding:
        existing = self.fleet.findings.get(key)
        if existing is not None:
            return existing
        start = now.replace(minute=0, second=0, microsecond=0)
        finding_id = deterministic_id(*key, start.isoformat(), prefix="finding-")
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
                "detected_at": now,
                **fields,
            }
        )


def _member(record: NodeInventory, dimension: str, value: str) -> bool:
    if (dimension, value) == FLEET_GROUP:
        return True
    return group_value(record, dimension) == value


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


def _fingerprint(diagnosis: Diagnosis) -> str:
    parts = [
        diagnosis.cause,
        diagnosis.category,
        ",".join(r.action for r in diagnosis.recommended),
        diagnosis.fleet_correlation.finding_id if diagnosis.fleet_correlation else "",
        diagnosis.crash_signature.bucket if diagnosis.crash_signature else "",
    ]
    return hashlib.sha1("|".join(parts).encode(), usedforsecurity=False).hexdigest()
