"""The replay's HTML report: a fleet view and one swimlane timeline per node, with plotly.

One self-contained file: plotly.js is embedded once (no network needed to open it), every figure has a
fixed element id, so the same timeline always gives the same bytes. Pure rendering: it reads a
`Timeline` and writes a file, nothing else.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from nodeheal.cli.timeline import ActionEntry, Incident, NodeTimeline, OperatorRequest, Timeline

MAX_NODE_PLOTS: Final = 200
"""Nodes drawn one by one; beyond this the report lists the rest (the JSON has them all)."""

_BAD = "#d62728"
_GOOD = "#2ca02c"
_PHASE_COLOURS: Final = {
    "intent": "#7f7f7f",
    "started": "#1f77b4",
    "succeeded": "#2ca02c",
    "failed": "#d62728",
    "skipped": "#bcbd22",
    "blocked": "#ff7f0e",
    "awaiting_approval": "#9467bd",
    "verified": "#17becf",
}


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _seg(fig: go.Figure, *, lane: str, start: datetime, end: datetime, colour: str, text: str) -> None:
    fig.add_trace(
        go.Scatter(
            x=[_iso(start), _iso(end)],
            y=[lane, lane],
            mode="lines",
            line={"color": colour, "width": 10},
            hovertext=[text, text],
            hoverinfo="text",
            showlegend=False,
        )
    )


def _mark(
    fig: go.Figure, *, lane: str, at: datetime, colour: str, text: str, label: str = "", symbol: str = "circle"
) -> None:
    fig.add_trace(
        go.Scatter(
            x=[_iso(at)],
            y=[lane],
            mode="markers+text" if label else "markers",
            marker={"color": colour, "size": 11, "symbol": symbol, "line": {"width": 1, "color": "#333"}},
            text=[label] if label else None,
            textposition="top center",
            hovertext=[text],
            hoverinfo="text",
            showlegend=False,
        )
    )


def _phases(fig: go.Figure, *, lane: str, action: ActionEntry, who: str = "") -> None:
    """One mark per audit phase of an action, coloured by phase."""
    for p in action.phases:
        _mark(
            fig,
            lane=lane,
            at=p.at,
            colour=_PHASE_COLOURS.get(p.phase, "#333"),
            text=f"{who}{action.action} {p.phase}: {html.escape(p.reason)}",
            label=p.phase,
        )


def node_figure(
    node: NodeTimeline,
    incidents: list[Incident],
    *,
    window_end: datetime | None,
    requests: list[OperatorRequest] | None = None,
) -> go.Figure:
    """Swimlanes for one node: probes bad/good per source, anomalies, diagnoses, audit phases, recovery,
    and the operator's requests (`nodeheal batch`) in lanes of their own."""
    fig = go.Figure()
    lanes: list[str] = []

    def lane(name: str) -> str:
        if name not in lanes:
            lanes.append(name)
        return name

    by_source: dict[str, list[Any]] = {}
    for t in node.probe_transitions:
        by_source.setdefault(t.source, []).append(t)
    for source in sorted(by_source):
        transitions = by_source[source]
        for i, t in enumerate(transitions):
            end = transitions[i + 1].at if i + 1 < len(transitions) else (node.last_probe or t.at)
            text = f"probes {source}: {'bad' if t.bad else 'good'} from {_iso(t.at)}" + (
                f" ({', '.join(t.reasons)})" if t.reasons else ""
            )
            _seg(
                fig,
                lane=lane(f"probes {source}"),
                start=t.at,
                end=max(end, t.at),
                colour=_BAD if t.bad else _GOOD,
                text=text,
            )
    for c in node.cloud_events:
        _mark(
            fig,
            lane=lane("cloud events"),
            at=c.at,
            colour="#8c564b",
            text=f"{c.action} {c.phase} ({c.cause}) {c.provider_event_id}",
            label=c.phase,
            symbol="diamond",
        )
    for inc in incidents:
        for a in inc.anomalies:
            name = lane(f"anomaly {a.kind}" + (f" {a.subject}" if a.subject else ""))
            end = a.resolved_at or window_end or a.detected_at
            text = (
                f"{a.kind} {a.severity}{' (expected)' if a.expected else ''}: onset {_iso(a.fault_onset)}, "
                f"detected {_iso(a.detected_at)}, resolved {_iso(a.resolved_at) if a.resolved_at else 'no'}"
            )
            _seg(fig, lane=name, start=a.fault_onset, end=end, colour="#ff9896" if a.expected else "#e377c2", text=text)
            _mark(fig, lane=name, at=a.detected_at, colour="#e377c2", text="detected: " + text, symbol="triangle-up")
        for d in inc.diagnoses:
            evidence = "<br>".join(html.escape(e.summary) for e in d.evidence[:6])
            text = (
                f"{'resolved ' if d.resolved else ''}diagnosis {d.cause} [{d.category}] confidence {d.confidence:.2f}"
                f"<br>ladder: {', '.join(d.recommended) or '—'}<br>{evidence}"
            )
            _mark(
                fig,
                lane=lane("diagnosis"),
                at=d.identified_at,
                colour="#9edae5" if d.resolved else "#1f77b4",
                text=text,
                label="" if d.resolved else d.cause,
                symbol="square",
            )
        for action in inc.actions:
            _phases(fig, lane=lane(f"audit {action.action}" + (" (dry run)" if action.dry_run else "")), action=action)
        if inc.recovered_at:
            _mark(
                fig,
                lane=lane("recovery"),
                at=inc.recovered_at,
                colour=_GOOD,
                text=f"all anomalies resolved {_iso(inc.recovered_at)}",
                label="resolved",
                symbol="star",
            )
        if inc.repaired_at and inc.repaired_at != inc.recovered_at:
            _mark(
                fig,
                lane=lane("recovery"),
                at=inc.repaired_at,
                colour="#17becf",
                text=f"repair verified {_iso(inc.repaired_at)}",
                label="verified",
                symbol="star",
            )
    for rq in requests or ():
        summary = "<br>".join(html.escape(e.summary) for e in rq.request.evidence[:3])
        _mark(
            fig,
            lane=lane("operator request"),
            at=rq.requested_at,
            colour="#bcbd22",
            text=f"operator request {rq.episode_id or rq.request_id}<br>ladder: {', '.join(rq.request.recommended)}"
            f"<br>{summary}",
            label="operator",
            symbol="square",
        )
        for action in rq.actions:
            name = lane(f"operator {action.action}" + (" (dry run)" if action.dry_run else ""))
            _phases(fig, lane=name, action=action, who="operator ")
    fig.update_layout(
        title=f"{node.cluster}/{node.node}",
        height=140 + 34 * max(3, len(lanes)),
        margin={"l": 220, "r": 30, "t": 50, "b": 40},
        yaxis={"categoryorder": "array", "categoryarray": list(reversed(lanes)), "type": "category"},
        xaxis={"type": "date"},
        template="plotly_white",
    )
    return fig


def fleet_figures(timeline: Timeline) -> list[go.Figure]:
    incidents = timeline.incidents
    over_time = go.Figure()
    classes = sorted({i.klass for i in incidents})
    for klass in classes:
        group = [i for i in incidents if i.klass == klass]
        over_time.add_trace(
            go.Scatter(
                x=[_iso(i.onset) for i in group],
                y=[f"{i.cluster}/{i.node}" for i in group],
                mode="markers",
                name=klass,
                marker={"size": 10},
                hovertext=[f"{klass}: ttd {i.ttd_s} s, tti {i.tti_s} s, ttr {i.ttr_s} s" for i in group],
                hoverinfo="text",
            )
        )
    over_time.update_layout(
        title="incidents over time (by class)", template="plotly_white", height=420, xaxis={"type": "date"}
    )

    budgets = timeline.summary.budgets_s
    dists = make_subplots(
        rows=1, cols=3, subplot_titles=("time to detect (s)", "time to identify (s)", "time to repair (s)")
    )
    for col, (key, budget_key) in enumerate((("ttd_s", "detect"), ("tti_s", "identify"), ("ttr_s", "repair")), start=1):
        values = [getattr(i, key) for i in incidents if getattr(i, key) is not None]
        dists.add_trace(go.Box(y=values, name=key, boxpoints="all", jitter=0.0, showlegend=False), row=1, col=col)
        dists.add_hline(
            y=budgets[budget_key],
            line={"color": _BAD, "dash": "dash"},
            annotation_text=f"budget {budgets[budget_key]:.0f} s",
            row=1,
            col=col,
        )
    dists.update_layout(title="1-5-10: distributions against the budgets", template="plotly_white", height=420)
    return [over_time, dists]


def write_replay_html(timeline: Timeline, *, path: Path, title: str, window: dict[str, Any]) -> None:
    """Write the report: summary table, fleet view, then one timeline per node with incidents."""
    s = timeline.summary
    by_node = {(n.cluster, n.node): n for n in timeline.nodes}
    incidents_by_node: dict[tuple[str, str], list[Incident]] = {}
    for inc in timeline.incidents:
        incidents_by_node.setdefault((inc.cluster, inc.node), []).append(inc)
    requests_by_node: dict[tuple[str, str], list[OperatorRequest]] = {}
    for rq in timeline.operator_requests:
        requests_by_node.setdefault((rq.cluster, rq.node), []).append(rq)

    def first_seen(k: tuple[str, str]) -> datetime:
        return min(
            [i.onset for i in incidents_by_node.get(k, [])] + [r.requested_at for r in requests_by_node.get(k, [])]
        )

    node_keys = sorted(set(incidents_by_node) | set(requests_by_node), key=lambda k: (first_seen(k), k))
    window_end = datetime.fromisoformat(window["until"].replace("Z", "+00:00")) if window.get("until") else None

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    rows = "".join(
        f"<tr><td>{name}</td><td>{fmt(d.p50)}</td><td>{fmt(d.p95)}</td><td>{fmt(d.max)}</td><td>{budget:.0f}</td></tr>"
        for name, d, budget in (
            ("detect (ttd_s)", s.ttd_s, s.budgets_s["detect"]),
            ("identify (tti_s)", s.tti_s, s.budgets_s["identify"]),
            ("repair (ttr_s)", s.ttr_s, s.budgets_s["repair"]),
        )
    )
    class_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v.count}</td><td>{fmt(v.ttd_s.p95)}</td><td>{fmt(v.tti_s.p95)}</td>"
        f"<td>{fmt(v.ttr_s.p95)}</td><td>{v.met_1_5_10}</td></tr>"
        for k, v in s.by_class.items()
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:24px}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>window {html.escape(str(window.get('since')))} → {html.escape(str(window.get('until')))}; "
        f"{s.counts.incidents} incidents on {s.counts.nodes_with_incidents} of {s.counts.nodes_seen} nodes"
        f" ({s.counts.open} still open at the window end), {s.counts.operator_requests} operator requests; "
        f"percentiles are nearest-rank, times in seconds from the first bad observation.</p>",
        f"<table><tr><th></th><th>p50</th><th>p95</th><th>max</th><th>budget</th></tr>{rows}</table>",
        "<table><tr><th>class</th><th>incidents</th><th>ttd p95</th><th>tti p95</th><th>ttr p95</th>"
        f"<th>1-5-10 met</th></tr>{class_rows}</table>",
        "<h2>fleet</h2>",
    ]
    for i, fig in enumerate(fleet_figures(timeline)):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fleet-{i}"))
    parts.append("<h2>nodes</h2>")
    for i, key in enumerate(node_keys[:MAX_NODE_PLOTS]):
        fig = node_figure(
            by_node[key], incidents_by_node.get(key, []), window_end=window_end, requests=requests_by_node.get(key)
        )
        parts.append(f"<div class='node-timeline' data-node='{html.escape(key[0])}/{html.escape(key[1])}'>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"node-{i}"))
        parts.append("</div>")
    if len(node_keys) > MAX_NODE_PLOTS:
        rest = ", ".join(html.escape(f"{c}/{n}") for c, n in node_keys[MAX_NODE_PLOTS:])
        parts.append(
            f"<p>{len(node_keys) - MAX_NODE_PLOTS} more nodes with incidents or operator requests (in the JSON "
            f"report): {rest}</p>"
        )
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
