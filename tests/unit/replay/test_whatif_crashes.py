"""The what-if's diagnoser gets the agents' crash reports (CRASHES), as the live diagnoser does. Before, replay
never read them: with unchanged rules a reviewer's demo what-if re-diagnosed 14 kernel crashes (kernel_panic,
hard_lockup, mce_fatal_panic, ...) as `unexplained_reboot` — differences the rule change under test never made."""

from __future__ import annotations

from pathlib import Path

from nodeheal.cli.replay import Recording, Scope
from nodeheal.cli.timeline import TimelineMessage, build_timeline
from nodeheal.cli.whatif import load_rules, run_sandbox, run_what_if
from nodeheal.schemas.crash import CrashReport
from nodeheal.schemas.probe import NodeProbe
from tests.integration.diagnoser.crashes import pstore_report
from tests.unit.replay.factories import agent_probe, at

PSTORE = Path(__file__).resolve().parents[2] / "data" / "kernel" / "null" / "pstore" / "dmesg-ramoops-0"


def _agent(t: float, seq: int) -> NodeProbe:
    boot, uptime = ("boot-1", 10_000 + t) if t < 60 else ("boot-2", t - 150)
    return agent_probe("node-k", t, seq, boot_id=boot, uptime_s=uptime)


def _crash(t: float) -> CrashReport:
    """What the agent of the new boot sends: the crashed boot's pstore record (a real NULL-pointer oops)."""
    header, *lines = PSTORE.read_text().splitlines()
    return pstore_report("node-k", "boot-2", lines, header=header, at=at(t))


def test_unchanged_rules_explain_a_crash_as_the_live_diagnoser_did(tmp_path: Path) -> None:
    probes = [_agent(t, i) for i, t in enumerate([*range(0, 60, 10), *range(160, 400, 10)])]
    crash = _crash(170)
    rules_file = tmp_path / "same.yaml"
    rules_file.write_text("detector: {}\n")
    rules = load_rules(rules_file)

    live = run_sandbox(inputs=probes, crashes=[crash], rules=rules, until=at(900))  # what the services did
    blind = run_sandbox(inputs=probes, rules=rules, until=at(900))  # the sandbox before: no crash reports
    said = [d.cause for d in live.diagnoses if not d.resolved]
    assert said and said[-1] == "kernel_oops_null_deref", said  # the crash report explains the reboot
    assert "kernel_oops_null_deref" not in {d.cause for d in blind.diagnoses}

    messages: list[TimelineMessage] = [*probes, *live.anomalies, *live.diagnoses]
    recording = Recording(since=at(0), until=at(900), scope=Scope(label="all"), messages=messages, crashes=[crash])
    outcome = run_what_if(recording=recording, recorded=build_timeline(messages), rules=rules)
    # no AUDIT in this recording: the plan's first step has no recorded action to match
    assert [(d.kind, d.recorded, d.what_if) for d in outcome.differences if d.kind != "other_action"] == []
