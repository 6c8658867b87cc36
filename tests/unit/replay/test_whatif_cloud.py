"""The what-if sandbox and the cloud events of a window: a notice reported inside the window is compared as
usual, even when the provider published it before the window's first input."""

from __future__ import annotations

from pathlib import Path

from nodeheal.cli.replay import Recording, Scope
from nodeheal.cli.timeline import TimelineMessage, build_timeline
from nodeheal.cli.whatif import load_rules, run_sandbox, run_what_if
from nodeheal.schemas.probe import NodeProbe
from tests.unit.replay.factories import agent_probe, at, cloud_event


def _agent(t: float, seq: int) -> NodeProbe:
    return agent_probe("node-h", t, seq, boot_id="boot-1" if t < 60 else "boot-2", uptime_s=10_000 + t)


def test_a_notice_reported_in_the_window_but_published_before_it_is_compared(tmp_path: Path) -> None:
    """The recorded run is what the same rules made of the same inputs, so the what-if must detect and diagnose
    alike.
    Before, the sandbox's `cloud_maintenance` anomaly (onset: the provider's `published_at`, an hour before the
    first probe) was taken for one of an event open before the window and left out: `not_detected`."""
    notice = cloud_event("node-h", t=5).model_copy(update={"published_at": at(-3600), "not_before": at(60)})
    probes = [_agent(t, i) for i, t in enumerate([*range(0, 60, 10), *range(180, 300, 10)])]
    rules_file = tmp_path / "same.yaml"
    rules_file.write_text("detector: {}\n")
    rules = load_rules(rules_file)
    live = run_sandbox(inputs=[notice, *probes], rules=rules, until=at(600))
    assert any(a.kind == "cloud_maintenance" for a in live.anomalies)
    messages: list[TimelineMessage] = [notice, *probes, *live.anomalies, *live.diagnoses]
    recording = Recording(since=at(0), until=at(600), scope=Scope(label="all"), messages=messages)
    outcome = run_what_if(recording=recording, recorded=build_timeline(messages), rules=rules)
    # the plan's first step is compared with AUDIT's first action, and this recording holds no AUDIT: only the
    # detection and diagnosis must agree
    assert [d for d in outcome.differences if d.kind != "other_action"] == []
    assert (outcome.open_before, outcome.earlier_anomalies) == (0, 0)
