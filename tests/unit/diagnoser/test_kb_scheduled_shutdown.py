"""A scheduled shutdown's announcement is planned_shutdown_reboot unless the excerpt shows it cancelled
(rules.yaml ops.scheduled_shutdown_wall and its `veto`, docs/diagnoser.md "Scheduled shutdowns").

Real lines: kb-475 (round 11, spent on branch kbshut), systemd/systemd#23870 (logind's journal fields after
`shutdown -r` then `shutdown -c`) and systemd/systemd#34554 (a cancellation that did not stop the reboot). The
sysvinit / upstart lines are their format strings instantiated (marked).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeheal.diagnoser.kb import analyse, default_matcher, parse_knowledge_base
from nodeheal.diagnoser.kb.loader import KnowledgeBaseError

KB_DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
ROWS = {row["id"]: row for row in map(json.loads, (KB_DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines())}
RULES = Path(__file__).resolve().parents[3] / "services/diagnoser/src/nodeheal/diagnoser/kb/rules.yaml"

# https://github.com/systemd/systemd/pull/23870 (the MESSAGE fields of the two journal entries it shows)
SCHEDULED_23870 = "    MESSAGE=The system will reboot at Thu 2022-06-30 12:16:43 CEST!"
CANCELLED_23870 = "    MESSAGE=System shutdown has been cancelled"
# https://github.com/systemd/systemd/issues/34554 (cancelled while a delay inhibitor held it: the reboot went ahead)
WENT_AHEAD_34554 = [
    "Sep 25 17:34:58 rdtw systemd-logind[761]: The system will reboot now!",
    "Sep 25 17:34:58 rdtw systemd-logind[761]: System shutdown has been cancelled",
    "Sep 25 17:35:01 rdtw systemd-logind[761]: System is rebooting.",
]


def primary(lines: list[str]) -> tuple[str | None, str | None]:
    found = analyse(lines).primary
    return (found.cls, found.rule_id) if found is not None else (None, None)


@pytest.mark.parametrize(
    "line",
    [
        SCHEDULED_23870,
        next(line for line in ROWS["kb-475"]["lines"] if "going down for reboot in 3 minutes!" in line),
        "The system is going DOWN for system halt in 1 minute!",  # fmt: sysvinit shutdown.c warn()
        "The system is going down for poweroff IN ONE MINUTE!",  # fmt: upstart util/shutdown.c warning_message()
        "The system is going down for reboot at Thu 2015-09-10 10:00:00 UTC!",  # fmt: older logind-utmp.c warn_wall()
        "Jan 01 00:00:00 node-1 systemd-logind[633]: The system will power off at Thu 2022-06-30 12:16:43 CEST!",
    ],
)
def test_the_announcement_alone_is_planned(line: str) -> None:
    assert primary([line]) == ("planned_shutdown_reboot", "ops.scheduled_shutdown_wall")


@pytest.mark.parametrize(
    "lines",
    [
        [SCHEDULED_23870, CANCELLED_23870],
        # constructed: sysvinit shutdown.c warn() then stopit()'s line on the canceller's terminal
        ["The system is going DOWN for reboot in 5 minutes!", "Shutdown cancelled."],
        # constructed: upstart util/shutdown.c warning_message() then cancel_callback()
        ["The system is going down for halt IN ONE MINUTE!", "shutdown: Shutdown cancelled"],
    ],
    ids=["logind (real)", "sysvinit", "upstart"],
)
def test_an_announcement_the_excerpt_shows_cancelled_is_no_finding(lines: list[str]) -> None:
    assert analyse(lines).findings == ()
    # the per-line filter does not look across lines: the announcement alone is still a line of the class
    finding = default_matcher().match_line(lines[0])
    assert finding is not None and finding.rule_id == "ops.scheduled_shutdown_wall"


def test_the_veto_is_the_announcements_only() -> None:
    """systemd#34554: 'now!' and logind's 'System is rebooting.' are the shutdown under way; the cancel line
    that did not stop it vetoes none of them."""
    assert primary(WENT_AHEAD_34554)[0] == "planned_shutdown_reboot"


def test_a_veto_that_matches_its_own_example_stops_the_load() -> None:
    rules = RULES.read_text(encoding="utf-8")
    veto = "    veto: '[Ss]hutdown (?:has been )?cancell?ed'"
    assert veto in rules
    with pytest.raises(KnowledgeBaseError, match="veto matches the rule's own example"):
        parse_knowledge_base(rules.replace(veto, "    veto: 'going'"))
