"""The demo's 1-5-10 report: what was recorded in the streams (via the shared timeline, so
`nodeheal replay` of the same window gives the same time-to-detect / identify / repair), held
against the simulator's ground truth (detected? right cause? repaired?), the referee's policy books
(budgets, reboots inside the partition) and fleet health. JSON for machines, HTML with plots for
people, a table for the terminal."""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nats.js.client import JetStreamContext
from rich.console import Console
from rich.table import Table

from nodeheal.cli.timeline import DiagnosisEntry, Incident, build_timeline, distribution
from nodeheal.cli.window import read_stream
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import Anomaly, CloudSystemEvent, Diagnosis, RemediationRecord
from nodeheal.schemas.subjects import escape_token
from nodeheal.sim.faults import InjectedFault
from nodeheal.sim.scale import summary_line

MATCH_BEFORE_S = 2.0
"""An incident belongs to a fault if its onset is at most this much before the injection (clock skew)."""
MATCH_AFTER_S = 180.0
"""... and at most this much after it (cloud events are seen when the poller sees them)."""

CRASH_CLASSES = frozenset({"power_loss", "bad_kernel_crash", "zone_crash"})


@dataclass
class RunRecord:
    nodes: int
    duration_s: float
    probe_interval_s: float
    reboot_s: float
    run_start: datetime
    run_end: datetime
    truth: list[InjectedFault]
    health: list[dict[str, float]]
    world: dict[str, Any]
    sim_stats: dict[str, Any]
    nats_url: str
    bad_kernel: str
    extra: dict[str, Any] = field(default_factory=dict)


Message = CloudSystemEvent | Anomaly | Diagnosis | RemediationRecord


async def collect_window(
    js: JetStreamContext,
    *,
    settings: NatsSettings,
    since: datetime,
    until: datetime,
    anomaly_nodes: list[str] | None = None,
) -> tuple[list[Message], list[dict[str, Any]]]:
    """The run's messages. `anomaly_nodes`: read only these nodes' anomalies (the demo's bound on its own
    memory after an anomaly storm, `scale.report_anomalies`)."""
    topo = settings.topology()
    p = settings.prefix
    sp = settings.stream_prefix
    messages: list[Message] = []
    anomalies = (
        [f"{p}.anomaly.*.{escape_token(node)}" for node in anomaly_nodes]
        if anomaly_nodes is not None
        else [f"{p}.anomaly.*.*"]
    )
    sources: list[tuple[str, list[str], type[Message]]] = [
        (f"{sp}CLOUD", [f"{p}.cloud.*.*"], CloudSystemEvent),
        (f"{sp}ANOMALIES", anomalies, Anomaly),
        (f"{sp}DIAGNOSES", [f"{p}.diagnosis.*.*"], Diagnosis),
        (f"{sp}AUDIT", [f"{p}.audit.*.*"], RemediationRecord),
    ]
    assert all(topo.stream(s[0]) for s in sources)
    for stream, subjects, model in sources:
        async for stored in read_stream(js, stream=stream, subjects=subjects, since=since, until=until):
            messages.append(model.model_validate_json(stored.data))
    findings = [
        json.loads(stored.data)
        async for stored in read_stream(
            js, stream=f"{sp}DIAGNOSES", subjects=[f"{p}.finding.fleet"], since=since, until=until
        )
    ]
    return messages, findings


def _match(truth: list[InjectedFault], incidents: tuple[Incident, ...]) -> dict[str, Incident]:
    """Fault id → the incident that shows it: same node, and an anomaly of the incident whose first bad
    observation is near the injection. Matching on the anomaly, not the incident's onset, keeps a
    fault that lands on a node still recovering from an earlier one (its anomalies join that
    incident) from counting as undetected; each anomaly episode serves one fault."""
    by_node: dict[str, list[Incident]] = defaultdict(list)
    for inc in incidents:
        by_node[inc.node].append(inc)
    used: set[tuple[str, str, str]] = set()
    out: dict[str, Incident] = {}
    for fault in sorted(truth, key=lambda f: f.injected_at):
        candidates = sorted(
            (
                (ep.fault_onset.timestamp(), inc.incident_id, ep.anomaly_key, inc)
                for inc in by_node.get(fault.node, [])
                for ep in inc.anomalies
                if -MATCH_BEFORE_S <= ep.fault_onset.timestamp() - fault.injected_at <= MATCH_AFTER_S
            ),
            key=lambda c: (c[0], c[1], c[2]),
        )
        for onset, incident_id, key, inc in candidates:
            mark = (incident_id, key, str(onset))
            if mark not in used:
                used.add(mark)
                out[fault.fault_id] = inc
                break
    return out


def _ours(inc: Incident, d: DiagnosisEntry) -> bool:
    """A verdict about the remediator's own repair of this incident (`planned_reboot` citing one of the
    incident's actions as its history evidence): it describes the repair, not the fault."""
    own = {a.action_id for a in inc.actions}
    return d.cause == "planned_reboot" and any(e.kind == "history" and e.ref in own for e in d.evidence)


def _final_cause(inc: Incident) -> str | None:
    """The last verdict on the fault: a later episode of the node's downtime during our own reboot is
    diagnosed `planned_reboot` and joins the incident, but it is the repair's word, not the fault's
    (unless it is the only verdict there is)."""
    live = [d for d in inc.diagnoses if not d.resolved or d.recovered]
    on_fault = [d for d in live if not _ours(inc, d)] or live
    return on_fault[-1].cause if on_fault else None


def _first_cause(inc: Incident) -> str | None:
    live = [d for d in inc.diagnoses if not d.resolved or d.recovered]
    return live[0].cause if live else None


def _dist(values: list[float]) -> dict[str, float | None]:
    d = distribution(values)
    return {"p50": d.p50, "p95": d.p95, "max": d.max}


def systematic_risks(findings: list[dict[str, Any]], *, bad_kernel: str | None) -> list[dict[str, Any]]:
    """The fleet findings still raised at the end of the run (and those cleared during it), one entry each,
    as last said: a finding that grew (more nodes, a higher rate) is published again under its id.

    `summary` is the finding's own message (FleetFinding.message)."""
    raised: dict[str, dict[str, Any]] = {}
    cleared: set[str] = set()
    for f in findings:  # a finding is published when raised, when it changes and when it clears
        if f.get("kind") == "new_crash_bucket":
            continue  # the kernel team's notice of a new crash bucket: not a systematic risk
        fid = str(f.get("finding_id") or f.get("id"))
        if f.get("cleared"):
            cleared.add(fid)
        else:
            raised[fid] = f  # the latest word on it (findings arrive in stream order)
    risks = []
    for fid, f in sorted(
        raised.items(), key=lambda x: (str(x[1].get("kind")), str(x[1].get("dimension")), str(x[1].get("value")))
    ):
        risks.append(
            {
                "dimension": f.get("dimension"),
                "value": f.get("value"),
                "ratio": f.get("ratio"),
                "p_value": f.get("p_value"),
                "affected_nodes": (
                    len(f["affected_nodes"]) if isinstance(f.get("affected_nodes"), list) else f.get("affected_nodes")
                ),
                "kind": f.get("kind", f.get("finding_kind")),
                "scope": f.get("scope"),
                "summary": f.get("message") or f.get("summary") or f.get("description"),
                "is_injected_bad_kernel": f.get("dimension") == "kernel" and f.get("value") == bad_kernel,
                "cleared_during_run": fid in cleared,
            }
        )
    return risks


def build_report(record: RunRecord, *, messages: list[Message], findings: list[dict[str, Any]]) -> dict[str, Any]:
    truth = record.truth
    pre = build_timeline(messages)
    matched = _match(truth, pre.incidents)
    class_by_incident: dict[str, str] = {}
    for fid, shown in sorted(matched.items()):
        class_by_incident.setdefault(shown.incident_id, fid)
    fault_by_id = {f.fault_id: f for f in truth}

    def class_of(inc: Incident) -> str:
        fid = class_by_incident.get(inc.incident_id)
        return fault_by_id[fid].fault_class if fid else "unplanned"

    timeline = build_timeline(messages, class_of=class_of)
    summary = timeline.summary

    rows = []
    per_class: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"ttd": [], "tti": [], "ttr": [], "inj": []})
    from_injection: list[float] = []
    correct = final_correct = detected = repaired = 0
    for fault in truth:
        inc = matched.get(fault.fault_id)
        final = _final_cause(inc) if inc else None
        first = _first_cause(inc) if inc else None
        # the verdict is the diagnosis that identified the fault (the one time-to-identify measures
        # and the remediator acted on); later updates describe what followed, e.g. our own reboot
        ok = first in fault.expected
        detected += inc is not None
        correct += ok
        final_correct += final in fault.expected
        repaired += bool(inc and inc.repaired_at is not None)
        if inc is not None:
            pc = per_class[fault.fault_class]
            pc["ttd"].append(inc.ttd_s)
            # the simulator knows when it broke the node: the time to detect as the 1-5-10 promise
            # means it, including how long the fault stayed unseen (an agent's heartbeats carry no
            # services or file systems: a dead kubelet shows in the next full probe)
            pc["inj"].append(round(inc.detected_at.timestamp() - fault.injected_at, 3))
            from_injection.append(pc["inj"][-1])
            if inc.tti_s is not None:
                pc["tti"].append(inc.tti_s)
            if inc.ttr_s is not None:
                pc["ttr"].append(inc.ttr_s)
        rows.append(
            {
                **fault.as_json(),
                "detected": inc is not None,
                "incident_id": inc.incident_id if inc else None,
                "onset_lag_s": round(inc.onset.timestamp() - fault.injected_at, 3) if inc else None,
                "shared_incident": bool(inc and class_by_incident.get(inc.incident_id) != fault.fault_id),
                "ttd_s": inc.ttd_s if inc else None,
                "tti_s": inc.tti_s if inc else None,
                "ttr_s": inc.ttr_s if inc else None,
                "ttd_from_injection_s": round(inc.detected_at.timestamp() - fault.injected_at, 3) if inc else None,
                "cause": first,
                "final_cause": final,
                "category": inc.category if inc else None,
                "diagnosed_correctly": ok,
                "repaired": bool(inc and inc.repaired_at is not None),
                "actions": [a.action for a in inc.actions] if inc else [],
            }
        )
    audit = [m for m in messages if isinstance(m, RemediationRecord)]
    phases = Counter(r.phase for r in audit)
    actions_taken = Counter(r.action for r in audit if r.phase == "started" and not r.dry_run)
    blocked = [r for r in audit if r.phase == "blocked"]
    blocked_by = Counter(c.name for r in blocked for c in r.checks if not c.passed)
    crashes = sum(
        1
        for f in truth
        if f.fault_class in CRASH_CLASSES
        or (
            f.fault_class == "kernel_fault"
            and f.kernel_class
            in {"kernel_panic", "mce_fatal_panic", "kernel_bug", "hard_lockup", "vmcore_crash_sys_summary"}
        )
    )
    run_hours = (record.run_end - record.run_start).total_seconds() / 3600
    online = [h["online"] for h in record.health] or [1.0]
    risks = systematic_risks(findings, bad_kernel=record.bad_kernel)
    by_class_out = {
        klass: {
            "count": sum(1 for f in truth if f.fault_class == klass),
            "ttd_s": _dist(v["ttd"]),
            "ttd_from_injection_s": _dist(v["inj"]),
            "tti_s": _dist(v["tti"]),
            "ttr_s": _dist(v["ttr"]),
        }
        for klass, v in sorted(per_class.items())
    }
    for klass in sorted({f.fault_class for f in truth} - set(by_class_out)):
        by_class_out[klass] = {
            "count": sum(1 for f in truth if f.fault_class == klass),
            "ttd_s": _dist([]),
            "ttd_from_injection_s": _dist([]),
            "tti_s": _dist([]),
            "ttr_s": _dist([]),
        }
    accuracy_by_class = {}
    for klass in sorted({f.fault_class for f in truth}):
        sel = [r for r in rows if r["fault_class"] == klass]
        accuracy_by_class[klass] = {
            "injected": len(sel),
            "detected": sum(1 for r in sel if r["detected"]),
            "diagnosed_correctly": sum(1 for r in sel if r["diagnosed_correctly"]),
            "repaired": sum(1 for r in sel if r["repaired"]),
        }
    report: dict[str, Any] = {
        "faults": {
            "injected": len(truth),
            "detected": detected,
            "diagnosed_correctly": correct,
            "final_diagnosis_correct": final_correct,
            "repaired": repaired,
            "accuracy": round(correct / len(truth), 4) if truth else None,
        },
        "ttd_s": summary.ttd_s.model_dump(),
        "ttd_from_injection_s": _dist(from_injection),
        "detected_after_budget_from_injection": sum(1 for t in from_injection if t > 60.0),
        "tti_s": summary.tti_s.model_dump(),
        "ttr_s": summary.ttr_s.model_dump(),
        "budgets_s": {"detect": 60.0, "identify": 300.0, "repair": 600.0},
        "by_class": by_class_out,
        "accuracy_by_class": accuracy_by_class,
        "policy": {
            # the referee's count (sim/referee.py): nodes nodeheal holds disrupted, handed-over ones apart
            "budget_violations": (record.extra.get("safety") or {}).get("budget_exceedances", 0),
            "budget_violations_by_domain": (record.extra.get("safety") or {}).get("budget_exceedances_by_domain", {}),
            "violation_samples": (record.extra.get("safety") or {}).get("budget_exceedance_samples", []),
            "handed_to_people": (record.extra.get("safety") or {}).get("handed_to_people"),
            "reboots_in_partition": (record.extra.get("safety") or record.world).get("reboots_in_partition", 0),
            "blocked": len(blocked),
            "blocked_by_check": dict(sorted(blocked_by.items())),
            "budgets": record.world.get("budgets"),
            "max_disrupted_by_domain": record.world.get("max_disrupted_by_domain"),
        },
        "actions": {
            "taken": dict(sorted(actions_taken.items())),
            "audit_phases": dict(sorted(phases.items())),
            "cloud_api_calls": record.world.get("cloud_api_calls"),
            "evictions": record.world.get("evictions"),
        },
        "fleet": {
            "nodes": record.nodes,
            "crashes": crashes,
            "crash_rate": round(crashes / record.nodes, 6),
            "crash_rate_per_node_day": round(crashes / (record.nodes * run_hours / 24), 4) if run_hours else None,
            "schedulable_rate": round(record.world.get("schedulable_rate", 0.0), 4),
            "online_rate": round(sum(online) / len(online), 4),
        },
        "safety": record.extra.get("safety"),
        "security": record.extra.get("security"),
        "systematic_risks": risks,
        "bad_kernel_injected": record.bad_kernel,
        "bad_kernel_found": any(r["is_injected_bad_kernel"] for r in risks),
        "incidents": {
            "total": summary.counts.incidents,
            "unplanned": sum(1 for i in timeline.incidents if class_of(i) == "unplanned"),
            "met_1_5_10": summary.counts.met_1_5_10,
        },
        "timeline_by_class": {k: v.model_dump() for k, v in summary.by_class.items()},
        "fault_rows": rows,
        "run": {
            "nodes": record.nodes,
            "duration_s": record.duration_s,
            "probe_interval_s": record.probe_interval_s,
            "reboot_s": record.reboot_s,
            "start": record.run_start.isoformat(),
            "end": record.run_end.isoformat(),
            "nats_url": record.nats_url,
            "simulator": record.sim_stats,
            "partition": record.world.get("partition"),
            "partition_actions": record.world.get("partition_actions"),
            "note": (
                "time-to-x figures are measured from the first bad observation (Anomaly.fault_onset), as "
                "`nodeheal replay` computes them; ttd_from_injection_s (per fault row, per class and in all) "
                "measures from the simulator's injection time, which includes how long the fault stayed "
                "unseen (a service or disk fault shows in the agent's next full probe). Reboots take "
                "reboot_s seconds in the simulation."
            ),
        },
        "health": record.health[:: max(1, len(record.health) // 400)],
    }
    return report


# ---------------------------------------------------------------------------------------------- output


def print_summary(report: dict[str, Any], *, console: Console) -> None:
    f = report["faults"]
    table = Table(title="nodeheal 1-5-10 report")
    table.add_column("fault class")
    table.add_column("n", justify="right")
    table.add_column("detected", justify="right")
    table.add_column("right cause", justify="right")
    table.add_column("repaired", justify="right")
    table.add_column("TTD p50/p95 s", justify="right")
    table.add_column("from injection", justify="right")
    table.add_column("TTI p50/p95 s", justify="right")
    table.add_column("TTR p50/p95 s", justify="right")

    def pp(d: dict[str, float | None]) -> str:
        return "/".join("-" if d[k] is None else f"{d[k]:.1f}" for k in ("p50", "p95"))

    for klass, acc in report["accuracy_by_class"].items():
        bc = report["by_class"][klass]
        table.add_row(
            klass,
            str(acc["injected"]),
            str(acc["detected"]),
            str(acc["diagnosed_correctly"]),
            str(acc["repaired"]),
            pp(bc["ttd_s"]),
            pp(bc["ttd_from_injection_s"]),
            pp(bc["tti_s"]),
            pp(bc["ttr_s"]),
        )
    table.add_row(
        "all",
        str(f["injected"]),
        str(f["detected"]),
        str(f["diagnosed_correctly"]),
        str(f["repaired"]),
        pp(report["ttd_s"]),
        pp(report["ttd_from_injection_s"]),
        pp(report["tti_s"]),
        pp(report["ttr_s"]),
        style="bold",
    )
    console.print(table)
    pol = report["policy"]
    console.print(
        f"policy: budget violations {pol['budget_violations']}, reboots in partition {pol['reboots_in_partition']}, "
        f"blocked {pol['blocked']} {pol['blocked_by_check']}",
        highlight=False,
    )
    simulator = report["run"]["simulator"]
    if simulator.get("kept_interval") is False:
        console.print(
            f"[bold]simulator could not keep the interval[/]: every node probed every "
            f"{simulator.get('effective_interval_s', 0.0):.1f}s on average (longest gap "
            f"{simulator.get('effective_interval_max_s', 0.0):.1f}s) against the requested "
            f"{report['run']['probe_interval_s']:g}s (the real agent code costs "
            f"{simulator.get('agent_collect_cpu_us_per_probe')} µs CPU per probe here)",
            highlight=False,
        )
    if report.get("safety"):
        console.print(f"safety (independent referee): {_safety_line(report)}", highlight=False)
        console.print(f"handed to people, still cordoned: {_handed_line(report)}", highlight=False)
    if report.get("security"):
        console.print(f"security: {_security_line(report)}", highlight=False)
    if report.get("chaos"):
        console.print(f"chaos: {_chaos_line(report)}", highlight=False)
    if scale_line := summary_line(report):
        console.print(f"processes and scale: {scale_line}", highlight=False)
    fl = report["fleet"]
    console.print(
        f"fleet: crash rate {fl['crash_rate']:.4f}, schedulable {fl['schedulable_rate']:.1%}, "
        f"online {fl['online_rate']:.1%}; systematic risks: "
        + (
            "; ".join(
                f"{r['kind']} {r['dimension']}={r['value']} x{r['ratio']:.1f} ({r['affected_nodes']} nodes)"
                for r in report["systematic_risks"]
            )
            or "none"
        ),
        highlight=False,
    )


def _handed_line(report: dict[str, Any]) -> str:
    """Capacity lost to people's queues (informational): per pool, nodes escalated and still cordoned."""
    handed = (report.get("safety") or {}).get("handed_to_people") or {}
    at_end, most = handed.get("by_pool_at_end") or {}, handed.get("by_pool_max") or {}
    if not most:
        return "none"
    return ", ".join(f"pool {pool} {at_end.get(pool, 0)} at the end (at most {n})" for pool, n in sorted(most.items()))


def _safety_line(report: dict[str, Any]) -> str:
    safety = report.get("safety") or {}
    return ", ".join(f"{k} {v}" for k, v in safety.items() if isinstance(v, int) and not isinstance(v, bool))


def _chaos_line(report: dict[str, Any]) -> str:
    chaos = report.get("chaos") or {}
    if not chaos:
        return ""
    kills = f"{chaos.get('kills', 0)} kills, {chaos.get('restarted', 0)} restarted; " if chaos.get("enabled") else ""
    restarts = chaos.get("liveness_restarts") or 0
    liveness = f"; {restarts} restarted by the liveness probe" if restarts else ""
    why = chaos.get("lost_by_reason") or {}
    lost = f"lost faults {chaos.get('lost_faults')}" + (
        f" ({', '.join(f'{reason} {n}' for reason, n in sorted(why.items()))})" if why else ""
    )
    return f"{kills}{lost}, repeated side effects {chaos.get('repeated_side_effects')}" + liveness


def _security_line(report: dict[str, Any]) -> str:
    security = report.get("security") or {}
    if not security:
        return ""
    return f"NATS auth {security['auth_mode']}, permission violations {security['permission_violations']}"


def write_html(report: dict[str, Any], path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    classes = list(report["by_class"])
    fig = make_subplots(
        rows=3,
        cols=1,
        subplot_titles=(
            "Time to detect / identify / repair per fault class (p95, seconds; lines: 60 / 300 / 600 s budgets)",
            "Faults over time: injected → detected → identified → repaired",
            "Fleet health",
        ),
        vertical_spacing=0.09,
        row_heights=[0.36, 0.38, 0.26],
    )
    for key, name in (("ttd_s", "detect"), ("tti_s", "identify"), ("ttr_s", "repair")):
        fig.add_trace(
            go.Bar(x=classes, y=[report["by_class"][c][key]["p95"] for c in classes], name=f"{name} p95"), row=1, col=1
        )
    for budget in (60, 300, 600):
        fig.add_hline(y=budget, line_dash="dot", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    start = datetime.fromisoformat(report["run"]["start"])
    rows = report["fault_rows"]
    marks: tuple[tuple[str, str | None, str], ...] = (
        ("injected", None, "circle-open"),
        ("detected", "ttd_from_injection_s", "circle"),
    )
    for label, mark_key, symbol in marks:
        xs, ys, texts = [], [], []
        for r in rows:
            at = r["injected_at"] + (r[mark_key] or 0 if mark_key else 0)
            if mark_key and r[mark_key] is None:
                continue
            xs.append(datetime.fromtimestamp(at, tz=start.tzinfo))
            ys.append(r["fault_class"])
            texts.append(f"{r['node']} {r['kernel_class'] or ''} cause={r['cause']}")
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="markers", name=label, marker_symbol=symbol, text=texts), row=2, col=1
        )
    for label, key in (("identified", "tti_s"), ("repaired", "ttr_s")):
        xs, ys = [], []
        for r in rows:
            if r[key] is None or r["onset_lag_s"] is None:
                continue
            xs.append(datetime.fromtimestamp(r["injected_at"] + r["onset_lag_s"] + r[key], tz=start.tzinfo))
            ys.append(r["fault_class"])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=label), row=2, col=1)
    health = report["health"]
    hx = [datetime.fromtimestamp(h["t"], tz=start.tzinfo) for h in health]
    fig.add_trace(go.Scatter(x=hx, y=[h["online"] for h in health], name="online"), row=3, col=1)
    fig.add_trace(go.Scatter(x=hx, y=[h["healthy"] for h in health], name="healthy"), row=3, col=1)
    fig.update_layout(height=1250, title="nodeheal demo — the 1-5-10 report", barmode="group")
    f = report["faults"]
    pol = report["policy"]
    fl = report["fleet"]
    risks = (
        "".join(
            f"<li>{html.escape(str(r['dimension']))} = {html.escape(str(r['value']))}: ×{r['ratio']} "
            f"(p={r['p_value']}), {r['affected_nodes']} nodes"
            f"{' — ' + html.escape(str(r['summary'])) if r.get('summary') else ''}</li>"
            for r in report["systematic_risks"]
        )
        or "<li>none</li>"
    )
    acc_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['injected']}</td><td>{v['detected']}</td>"
        f"<td>{v['diagnosed_correctly']}</td><td>{v['repaired']}</td></tr>"
        for k, v in report["accuracy_by_class"].items()
    )
    head = f"""<h1>nodeheal demo — 1-5-10 report</h1>
<p>{report["run"]["nodes"]} nodes, {report["run"]["duration_s"]:.0f}s of faults, probe interval
{report["run"]["probe_interval_s"]}s, simulated reboot {report["run"]["reboot_s"]}s.
{html.escape(report["run"]["note"])}</p>
<h2>Faults</h2><p>injected {f["injected"]}, detected {f["detected"]}, diagnosed correctly {f["diagnosed_correctly"]}
({f["accuracy"]}), repaired {f["repaired"]}.</p>
<table border=1 cellpadding=4><tr><th>class</th><th>injected</th><th>detected</th><th>right cause</th>
<th>repaired</th></tr>{acc_rows}</table>
<h2>Policy</h2><p>budget violations {pol["budget_violations"]}, reboots inside the partition
{pol["reboots_in_partition"]}, actions blocked by policy {pol["blocked"]}
{html.escape(str(pol["blocked_by_check"]))}</p>
<h2>Safety (independent referee)</h2><p>{html.escape(_safety_line(report))}</p>
<p>Handed to people, still cordoned (capacity lost to people's queues, not a violation):
{html.escape(_handed_line(report))}</p>
<h2>Security</h2><p>{html.escape(_security_line(report))}</p>
<h2>Chaos: lost faults and repeated side effects</h2><p>{html.escape(_chaos_line(report))}</p>
<h2>Fleet</h2><p>crash rate {fl["crash_rate"]}, schedulable {fl["schedulable_rate"]:.1%},
online {fl["online_rate"]:.1%}</p>
<h2>Systematic risks found</h2><ul>{risks}</ul>"""
    body = fig.to_html(full_html=False, include_plotlyjs="inline")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>nodeheal report</title></head>"
        f"<body style='font-family:sans-serif'>{head}{body}</body></html>"
    )
