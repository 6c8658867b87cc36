"""One diagnosis → one ladder, within policy, under the node's lease, audit first.

For each step: policy checks (pause, node history, storm guard, budgets, rate, approval), then the
intent record (acknowledged by the stream, else no action), started, the action, succeeded / failed,
a Kubernetes Event on the node, and after a fix the verification (verified, or the next rung).
A step already recorded for its deterministic action id is never executed twice: a `started` without a
result (the previous holder died mid-action) is not repeated; the node is verified instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nodeheal.remediator import control, planner, policy
from nodeheal.remediator.actions import ActionOutcome
from nodeheal.remediator.actions.cloud import Clouds
from nodeheal.remediator.actions.kube import KubeActions
from nodeheal.remediator.actions.node import NodeAgent
from nodeheal.remediator.audit import AuditLog, AuditUnavailableError
from nodeheal.remediator.leases import Lease, LeaseLostError, Leases
from nodeheal.remediator.ledger import Ledger
from nodeheal.remediator.policy import Slot
from nodeheal.remediator.settings import RemediatorSettings
from nodeheal.remediator.verify import Verifier
from nodeheal.remediator.views import FleetView
from nodeheal.runtime.metrics import PipelineMetrics, observe_stage, pipeline_metrics
from nodeheal.runtime.telemetry import current_trace_id
from nodeheal.schemas.audit import PolicyCheck, RemediationPhase, RemediationRecord
from nodeheal.schemas.diagnosis import ActionName, Diagnosis
from nodeheal.schemas.ids import ActionId

log = logging.getLogger("nodeheal.remediator.runner")

Disposition = Literal["ack", "retry"]
StepResult = Literal["next", "done", "retry"]
_TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "skipped", "verified"})


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


@dataclass(slots=True)
class _Run:
    diagnosis: Diagnosis
    lease: Lease
    history: list[RemediationRecord]
    cordoned_by_us: bool = False
    slot_held: bool = False
    notes: list[str] = field(default_factory=list)

    def phases(self, action_id: str) -> set[str]:
        return {r.phase for r in self.history if r.action_id == action_id}


class Remediator:
    def __init__(
        self,
        *,
        settings: RemediatorSettings,
        audit: AuditLog,
        leases: Leases,
        ledger: Ledger,
        control_kv: KeyValue,
        view: FleetView,
        node_agent: NodeAgent,
        kube: KubeActions | None,
        clouds: Clouds,
        verifier: Verifier,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.policy = settings.policy
        self.audit = audit
        self.leases = leases
        self.ledger = ledger
        self.control_kv = control_kv
        self.view = view
        self.node_agent = node_agent
        self.kube = kube
        self.clouds = clouds
        self.verifier = verifier
        self.actor = settings.instance
        self.metrics = metrics or pipeline_metrics()
        self.storms: frozenset[tuple[policy.DomainKind, str]] = frozenset()
        self.counters: dict[str, int] = {}

    # -- records ---------------------------------------------------------------------------------
    async def _record(
        self,
        run: _Run | None,
        *,
        diagnosis: Diagnosis,
        action_id: str,
        action: ActionName,
        phase: RemediationPhase,
        reason: str,
        checks: list[PolicyCheck] | None = None,
        rung: int | None = None,
        target: str | None = None,
        error: str | None = None,
        started_at: datetime | None = None,
    ) -> RemediationRecord:
        rec = RemediationRecord(
            cluster=diagnosis.cluster,
            node=diagnosis.node,
            action_id=action_id,
            action=action,
            target=target,
            phase=phase,
            reason=reason,
            checks=tuple(checks or ()),
            dry_run=self.policy.dry_run,
            actor=self.actor,
            lease_revision=run.lease.revision if run else None,
            diagnosis_id=diagnosis.id,
            cause=diagnosis.cause,
            rung=rung,
            # the incident's trace, continued from the diagnosis message by the consumer (handlers.py)
            trace_id=current_trace_id(),
            started_at=started_at,
            finished_at=utcnow() if phase in _TERMINAL else None,
            error=error,
        )
        await self.audit.record(rec)
        if run is not None:
            run.history.append(rec)
        self.counters[phase] = self.counters.get(phase, 0) + 1
        self._observe(rec, diagnosis)
        return rec

    def _observe(self, rec: RemediationRecord, diagnosis: Diagnosis) -> None:
        m = self.metrics
        m.remediation_actions.labels(action=rec.action, outcome=rec.phase).inc()
        if rec.phase == "blocked":
            for check in rec.checks:
                if not check.passed:
                    m.policy_blocks.labels(check=check.name).inc()
        if rec.phase == "verified" and diagnosis.fault_onset is not None and not rec.dry_run:
            observe_stage(
                m.time_to_repair,
                fault_class=diagnosis.category,
                onset=diagnosis.fault_onset,
                at=rec.finished_at or rec.time,
            )

    async def _srec(
        self,
        run: _Run,
        step: planner.Step,
        *,
        phase: RemediationPhase,
        reason: str,
        checks: list[PolicyCheck] | None = None,
        error: str | None = None,
        started_at: datetime | None = None,
    ) -> RemediationRecord:
        return await self._record(
            run,
            diagnosis=run.diagnosis,
            action_id=step.action_id,
            action=step.action,
            rung=step.rung,
            target=step.target,
            phase=phase,
            reason=reason,
            checks=checks,
            error=error,
            started_at=started_at,
        )

    # -- entry point -----------------------------------------------------------------------------
    async def handle(self, diagnosis: Diagnosis, *, heartbeat: Callable[[], Awaitable[None]]) -> Disposition:
        now = utcnow()
        self.view.on_diagnosis(diagnosis)
        if diagnosis.replay:
            return "ack"
        if diagnosis.resolved:
            return "ack"  # an ongoing ladder sees the recovery through the view before its next step
        checks = policy.check_fresh(
            diagnosis=diagnosis, policy=self.policy, now=now, recovered_at=self.view.recovered_at.get(diagnosis.node)
        )
        if policy.failed(checks):
            refused = planner.action_id(diagnosis_id=diagnosis.id, rung=0, action="none", target="refused")
            await self._record(
                None,
                diagnosis=diagnosis,
                action_id=refused,
                action="none",
                phase="skipped",
                reason="diagnosis refused: " + "; ".join(c.detail for c in policy.failed(checks)),
                checks=checks,
            )
            return "ack"
        lease = await self.leases.acquire(cluster=diagnosis.cluster, node=diagnosis.node, action=diagnosis.id)
        if lease is None:
            return "retry"  # another replica acts on this node; try again after its ladder (or its TTL)
        stop = asyncio.Event()
        keeper = asyncio.create_task(self.leases.keep(lease, stop=stop))
        beat = asyncio.create_task(self._heartbeat(heartbeat, stop))
        run: _Run | None = None
        try:
            since = now - timedelta(seconds=max(self.policy.node_repair_window_s, self.policy.flap_window_s))
            history = await self.audit.history(cluster=diagnosis.cluster, node=diagnosis.node, since=since)
            run = _Run(diagnosis=diagnosis, lease=lease, history=history)
            the_plan = planner.plan(
                diagnosis=diagnosis, cloud_events=self.view.cloud_events(diagnosis.node), policy=self.policy, now=now
            )
            for step in the_plan.steps:
                if lease.lost:
                    raise LeaseLostError(f"lease on {diagnosis.node} lost")
                result = await self._step(run, step)
                if result == "done":
                    return "ack"
                if result == "retry":
                    return "retry"
            return "ack"
        except AuditUnavailableError as exc:
            log.error("no audit, no action", extra={"node": diagnosis.node, "error": str(exc)})
            return "retry"
        except LeaseLostError as exc:
            log.error("lease lost mid-ladder; stopped", extra={"node": diagnosis.node, "error": str(exc)})
            return "retry"
        finally:
            stop.set()
            await asyncio.gather(keeper, beat, return_exceptions=True)
            if run is not None and run.slot_held and not run.cordoned_by_us:
                await self.ledger.release(node=diagnosis.node, now=utcnow())
            await self.leases.release(lease)

    async def _heartbeat(self, beat: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        interval = max(self.settings.ack_wait_s / 3, 0.2)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                try:
                    await beat()
                except Exception as exc:
                    log.warning("in-progress heartbeat failed", extra={"error": str(exc)})

    # -- one rung --------------------------------------------------------------------------------
    async def _step(self, run: _Run, step: planner.Step) -> StepResult:
        d = run.diagnosis
        phases = run.phases(step.action_id)
        if "verified" in phases or (step.action == "escalate" and "succeeded" in phases):
            return "done"
        if phases & {"failed", "skipped"}:
            return "next"
        if "succeeded" in phases or ("started" in phases and step.is_fix):
            if not step.is_fix:
                return "next"
            # Done before (or died mid-action: never repeated); verify instead.
            return await self._verify(
                run, step, since=max(r.time for r in run.history if r.action_id == step.action_id)
            )
        recovered = self.view.recovered_at.get(d.node)
        if recovered is not None and recovered > d.identified_at:
            await self._srec(
                run, step, phase="skipped", reason=f"node recovered at {recovered.isoformat()}; ladder stopped"
            )
            await self._finish(run)
            return "done"
        checks: list[PolicyCheck] = []
        pause = await control.read_pause(self.control_kv)
        checks.append(
            PolicyCheck(
                name="pause", passed=not pause.paused, detail=pause.reason or ("paused" if pause.paused else "running")
            )
        )
        if pause.paused:
            if "blocked" not in phases:
                await self._srec(
                    run,
                    step,
                    phase="blocked",
                    reason=f"remediation paused by {pause.by or 'someone'}: {pause.reason}",
                    checks=checks,
                )
            return "retry"
        now = utcnow()
        history_checks = policy.check_node_history(action=step.action, history=run.history, policy=self.policy, now=now)
        checks += history_checks
        if policy.failed(history_checks):
            detail = "; ".join(c.detail for c in policy.failed(history_checks))
            await self._srec(run, step, phase="blocked", reason=f"node quarantined: {detail}", checks=checks)
            await self._escalate(run, reason=f"quarantine of {d.node}: {detail}", rung=step.rung)
            return "done"
        if step.capacity and not run.slot_held:
            verdict = await self._gate_capacity(run, step, checks)
            if verdict is not None:
                return verdict
        if step.needs_approval:
            approver = await control.is_approved(self.control_kv, step.action_id)
            if approver is None:
                if "awaiting_approval" not in phases:
                    await self._srec(
                        run,
                        step,
                        phase="awaiting_approval",
                        reason=f"{step.action} needs approval: nodeheal approve {step.action_id}",
                        checks=checks,
                    )
                approver = await self._wait_for_approval(step.action_id)
                if approver is None:
                    await self._srec(
                        run,
                        step,
                        phase="blocked",
                        reason=f"no approval within {self.policy.approval_timeout_s:.0f}s",
                        checks=checks,
                    )
                    await self._escalate(run, reason=f"{step.action} on {d.node} was not approved", rung=step.rung)
                    return "done"
            checks.append(PolicyCheck(name="approval", passed=True, detail=f"approved by {approver}"))
        checks.append(PolicyCheck(name="dry_run", passed=True, detail=str(self.policy.dry_run).lower()))
        checks.append(PolicyCheck(name="lease", passed=not run.lease.lost, detail=f"revision {run.lease.revision}"))
        if step.action == "escalate":
            await self._escalate(run, reason=step.reason, rung=step.rung, action_id=step.action_id, checks=checks)
            return "done"
        await self._srec(run, step, phase="intent", reason=step.reason, checks=checks)
        started_at = utcnow()
        await self._srec(run, step, phase="started", reason=step.reason, started_at=started_at)
        outcome = await self._execute(run, step)
        await self._srec(
            run,
            step,
            phase="succeeded" if outcome.ok else "failed",
            reason=outcome.detail,
            started_at=started_at,
            error=None if outcome.ok else outcome.detail,
        )
        await self._event(
            d.node,
            reason=f"Nodeheal{step.action.title().replace('_', '')}",
            message=f"{step.action_id}: {outcome.detail}",
            warning=not outcome.ok,
        )
        if not outcome.ok or not step.is_fix:
            return "next"
        return await self._verify(run, step, since=started_at)

    async def _gate_capacity(self, run: _Run, step: planner.Step, checks: list[PolicyCheck]) -> StepResult | None:
        d = run.diagnosis
        now = utcnow()
        placement = self.view.placement(d.node)
        verdicts = policy.evaluate_storms(
            unhealthy=self.view.unhealthy(now=now, window_s=self.policy.unhealthy_window_s),
            sizes=self.view.sizes(),
            previously=self.storms,
            policy=self.policy,
        )
        self.storms = frozenset(k for k, v in verdicts.items() if v.in_storm)
        await self._storm_escalations(verdicts, run)
        storm = policy.check_storm(placement=placement, verdicts=verdicts)
        checks.append(storm)
        if not storm.passed:
            await self._srec(run, step, phase="blocked", reason=storm.detail, checks=checks)
            return "retry"
        until = now + timedelta(seconds=self.policy.slot_hold_s)
        budget_checks: list[PolicyCheck] = []

        def decide(slots: list[Slot], starts: list[datetime]) -> tuple[list[PolicyCheck], list[Slot], list[datetime]]:
            live = [s for s in slots if s.until > now]
            found = policy.check_budgets(
                placement=placement, slots=live, sizes=self.view.sizes(), policy=self.policy, now=now
            )
            recent = [t for t in starts if now - t < timedelta(seconds=60)]
            if step.disruptive:
                found.append(policy.check_rate(recent_starts=recent, policy=self.policy, now=now))
                recent.append(now)
            mine = Slot(
                node=d.node,
                zone=placement.zone,
                rack=placement.rack,
                node_pool=placement.node_pool,
                action_id=step.action_id,
                holder=self.actor,
                until=until,
            )
            return found, [s for s in live if s.node != d.node] + [mine], recent

        budget_checks = await self.ledger.transact(decide)
        checks += budget_checks
        if policy.failed(budget_checks):
            reason = "; ".join(f"{c.name}: {c.detail}" for c in policy.failed(budget_checks))
            await self._srec(run, step, phase="blocked", reason=f"over budget: {reason}", checks=checks)
            return "retry"
        run.slot_held = True
        return None

    async def _storm_escalations(
        self, verdicts: dict[tuple[policy.DomainKind, str], policy.StormVerdict], run: _Run
    ) -> None:
        """Escalate once per storm (the create on the storm key decides which replica), clear when it ends."""
        for (kind, value), verdict in verdicts.items():
            key = control.storm_key(kind, value)
            if verdict.in_storm:
                try:
                    await self.control_kv.create(key, f"{verdict.unhealthy}/{verdict.size}".encode())
                except KeyWrongLastSequenceError:
                    continue  # another replica (or an earlier pass) escalated this storm already
                sid = planner.action_id(
                    diagnosis_id=f"storm:{kind}:{value}",
                    rung=0,
                    action="escalate",
                    target=utcnow().strftime("%Y%m%d%H%M"),
                )
                await self._record(
                    None,
                    diagnosis=run.diagnosis,
                    action_id=sid,
                    action="escalate",
                    phase="succeeded",
                    reason=f"storm in {kind} {value}: {verdict.unhealthy} of {verdict.size} nodes unhealthy; "
                    "disruptive actions stopped there until it recovers",
                )
            else:
                with contextlib.suppress(KeyNotFoundError):
                    await self.control_kv.delete(key)

    async def _wait_for_approval(self, action_id: str) -> str | None:
        deadline = asyncio.get_running_loop().time() + self.policy.approval_timeout_s
        while asyncio.get_running_loop().time() < deadline:
            approver = await control.is_approved(self.control_kv, action_id)
            if approver is not None:
                return approver
            await asyncio.sleep(self.settings.control_poll_s)
        return None

    async def _verify(self, run: _Run, step: planner.Step, *, since: datetime) -> StepResult:
        d = run.diagnosis
        timeout = self.settings.verify_timeout_s
        if step.action in ("wait_for_cloud_event", "accept_cloud_event"):
            timeout = max(timeout, self.policy.cloud_event_wait_s if step.action == "wait_for_cloud_event" else timeout)
        outcome = await self.verifier.verify(cluster=d.cluster, node=d.node, since=since, timeout_s=timeout)
        if not outcome.ok:
            if "failed" not in run.phases(step.action_id):
                await self._srec(
                    run, step, phase="failed", reason=f"verification failed: {outcome.detail}", error=outcome.detail
                )
            return "next"
        await self._srec(run, step, phase="verified", reason=outcome.detail)
        await self._event(d.node, reason="NodehealVerified", message=f"{step.action_id}: {outcome.detail}")
        await self._finish(run)
        return "done"

    async def _finish(self, run: _Run) -> None:
        """The node is healthy (or recovered by itself): uncordon what we cordoned, give the slot back."""
        d = run.diagnosis
        cordon_ids = {
            r.action_id
            for r in run.history
            if r.action in ("cordon", "drain", "taint") and r.phase == "succeeded" and r.diagnosis_id == d.id
        }
        if cordon_ids:
            uid = planner.action_id(diagnosis_id=d.id, rung=999, action="uncordon", target=None)
            if "succeeded" not in run.phases(uid):
                await self._record(
                    run, diagnosis=d, action_id=uid, action="uncordon", phase="intent", reason="verified healthy"
                )
                started = utcnow()
                await self._record(
                    run,
                    diagnosis=d,
                    action_id=uid,
                    action="uncordon",
                    phase="started",
                    reason="verified healthy",
                    started_at=started,
                )
                outcome = await self._execute_uncordon(d.node)
                await self._record(
                    run,
                    diagnosis=d,
                    action_id=uid,
                    action="uncordon",
                    phase="succeeded" if outcome.ok else "failed",
                    reason=outcome.detail,
                    started_at=started,
                    error=None if outcome.ok else outcome.detail,
                )
                await self._event(d.node, reason="NodehealUncordon", message=outcome.detail, warning=not outcome.ok)
        run.cordoned_by_us = False
        if run.slot_held:
            await self.ledger.release(node=d.node, now=utcnow())
            run.slot_held = False

    async def _escalate(
        self,
        run: _Run,
        *,
        reason: str,
        rung: int,
        action_id: ActionId | None = None,
        checks: list[PolicyCheck] | None = None,
    ) -> None:
        d = run.diagnosis
        aid = action_id or planner.action_id(diagnosis_id=d.id, rung=rung, action="escalate", target="policy")
        await self._record(
            run,
            diagnosis=d,
            action_id=aid,
            action="escalate",
            phase="succeeded",
            rung=rung,
            reason=f"escalated to a person: {reason}",
            checks=checks,
        )
        await self._event(d.node, reason="NodehealEscalated", message=reason, warning=True)
        # A node left cordoned for a person keeps its slot until `slot_hold_s` runs out.
        if any(r.action == "cordon" and r.phase == "succeeded" and r.diagnosis_id == d.id for r in run.history):
            run.cordoned_by_us = True

    # -- side effects ----------------------------------------------------------------------------
    async def _event(self, node: str, *, reason: str, message: str, warning: bool = False) -> None:
        if self.kube is not None and not self.policy.dry_run:
            await self.kube.event(node, reason=reason, message=message, warning=warning)

    async def _execute_uncordon(self, node: str) -> ActionOutcome:
        if self.policy.dry_run:
            return ActionOutcome(ok=True, detail=f"dry run: would uncordon {node}")
        if self.kube is None:
            return ActionOutcome(ok=False, detail="Kubernetes access is disabled")
        await self.kube.taint(node, reason="", remove=True)
        return await self.kube.cordon(node, unschedulable=False)

    async def _execute(self, run: _Run, step: planner.Step) -> ActionOutcome:
        d = run.diagnosis
        if self.policy.dry_run:
            return ActionOutcome(ok=True, detail=f"dry run: would {step.action} {step.target or d.node}")
        try:
            return await self._execute_live(run, step)
        except Exception as exc:  # a failed call fails the rung; the ladder decides what comes next
            log.exception("action failed", extra={"node": d.node, "action_id": step.action_id})
            return ActionOutcome(ok=False, detail=f"{step.action} on {d.node} raised {type(exc).__name__}: {exc}")

    async def _execute_live(self, run: _Run, step: planner.Step) -> ActionOutcome:
        d = run.diagnosis
        if step.action in ("restart_service", "clean_disk"):
            return await self.node_agent.run(
                cluster=d.cluster,
                node=d.node,
                command=step.action,
                target=step.target,
                action_id=step.action_id,
                lease_revision=run.lease.revision,
            )
        if step.action in ("cordon", "taint", "drain"):
            if self.kube is None:
                return ActionOutcome(ok=False, detail="Kubernetes access is disabled")
            if step.action == "cordon":
                outcome = await self.kube.cordon(d.node)
            elif step.action == "taint":
                outcome = await self.kube.taint(d.node, reason=d.cause)
            else:
                outcome = await self.kube.drain(d.node, timeout_s=step.timeout_s)
            return outcome
        if step.action in ("reboot", "redeploy"):
            cloud, instance_id = self.view.instance.get(d.node, (None, None))
            if not instance_id:
                return ActionOutcome(
                    ok=False, detail=f"no instance id for {d.node} in the inventory; cannot {step.action}"
                )
            provider = self.clouds.for_cloud(cloud)
            if step.action == "reboot":
                return await provider.reboot(instance_id=instance_id)
            return await provider.redeploy(instance_id=instance_id)
        if step.action == "accept_cloud_event" and step.cloud_event is not None:
            return await self.clouds.for_cloud(step.cloud_event.cloud).accept_event(event=step.cloud_event)
        if step.action == "wait_for_cloud_event":
            return ActionOutcome(ok=True, detail=f"waiting for cloud event {step.target} to execute")
        if step.action == "uncordon":
            return await self._execute_uncordon(d.node)
        return ActionOutcome(ok=False, detail=f"action {step.action!r} is not something the remediator can do")
