"""Branch kbshut3: OpenWrt's sysupgrade once its second stage runs, written from the emitter (docs/diagnoser.md,
emitter table, kbshut3 row; rules.yaml ops.openwrt_sysupgrade_stage2).

Real lines: round 15's kb-616 and kb-617, held-out misses read after round 15 was measured (round 15 is spent for this
class: tests/data/kb/README.md "Spent."), and a sysupgrade console from a thread in neither the corpus nor benign.txt.
The pre-stage2 wording is the format string instantiated (`fmt`). Look-alikes: sysupgrade's announcement before its
hand-over to procd and procd's watchdog lines at boot (real ones in benign.txt, none from a round-15 thread), and
round 15's two kured excerpts, judged to carry no executing line (a drain can fail or never end).
"""

from __future__ import annotations

import pytest

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import analyse, default_matcher
from tests.unit.diagnoser.kbdata import BENIGN, ROWS
from tests.unit.diagnoser.kbdata import real as _real

PLANNED = "planned_shutdown_reboot"
RULE = "ops.openwrt_sysupgrade_stage2"


def _primary(lines: list[str]) -> tuple[str | None, str | None]:
    found = analyse(lines).primary
    return (found.cls, found.rule_id) if found is not None else (None, None)


# https://github.com/openwrt/openwrt/pull/11579 (an Aruba AP-303H flashed over the serial console; not in the corpus)
PR_11579 = [
    "Sun Dec 25 11:24:53 UTC 2022 upgrade: Commencing upgrade. Closing all shell sessions.",
    "Watchdog handover: fd=3",
    "- watchdog -",
    "Sun Dec 25 11:24:54 UTC 2022 upgrade: Sending TERM to remaining processes ...",
    "Sun Dec 25 11:24:58 UTC 2022 upgrade: Sending KILL to remaining processes ...",
    "[ 2979.970569] stage2 (2376): drop_caches: 3",
    "Sun Dec 25 11:25:04 UTC 2022 upgrade: Switching to ramdisk...",
    "Sun Dec 25 11:25:10 UTC 2022 upgrade: Performing system upgrade...",
]
# fmt: the pre-stage2 sysupgrade (common.sh kill_remaining(): `echo -n "Sending $sig to remaining processes ... "`,
# then the names it signalled), bare on the terminal it ran from
OLD_TERM = "Sending TERM to remaining processes ... dnsmasq ntpd syslogd klogd hotplug2 ubusd netifd "
OLD_KILL = "Sending KILL to remaining processes ... "
# fmt: its one exit without a reboot (run_ramfs's pivot failed; common.sh), the rule's veto
OLD_PIVOT_FAILED = "Failed to switch over to ramfs. Please reboot."


@pytest.mark.parametrize(
    "line",
    [
        _real("kb-616", "upgrade: Sending TERM to remaining processes ..."),
        _real("kb-616", "upgrade: Sending KILL to remaining processes ..."),
        _real("kb-616", "upgrade: Switching to ramdisk..."),
        _real("kb-616", "upgrade: Performing system upgrade..."),
        # the TERM line cut by a kernel line printed into it (wlan0 leaving as hostapd stops)
        _real("kb-617", "upgrade: Sending TERM to remaining processes ... hostapd"),
        _real("kb-617", "upgrade: Sending KILL to remaining processes ..."),
        *PR_11579[3:5],
        *PR_11579[6:],
        OLD_TERM,
        OLD_KILL,
    ],
)
def test_the_second_stage_lines_are_a_planned_reboot(line: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and (finding.cls, finding.rule_id) == (PLANNED, RULE), line


@pytest.mark.parametrize("excerpt", ["kb-616", "kb-617"])
def test_round_15_sysupgrade_consoles(excerpt: str) -> None:
    assert _primary(ROWS[excerpt]["lines"]) == (PLANNED, RULE)


def test_a_sysupgrade_console_outside_the_corpus() -> None:
    assert _primary(PR_11579) == (PLANNED, RULE)


def test_the_announcement_and_the_watchdog_hand_over_alone_are_not() -> None:
    """'Commencing upgrade.' is printed before `ubus call system sysupgrade`, which can fail and leave the device up;
    procd prints its watchdog lines at every boot too."""
    assert _primary(PR_11579[:3]) == (None, None)
    cut = [line for line in ROWS["kb-616"]["lines"] if "upgrade: " not in line or "Commencing upgrade" in line]
    assert any("Commencing upgrade" in line for line in cut) and any("- watchdog -" in line for line in cut)
    assert _primary(cut) == (None, None)


def test_the_benign_sysupgrade_and_procd_lines() -> None:
    lines = [line for line in BENIGN if "Commencing upgrade" in line or "watchdog -" in line or "Watchdog " in line]
    assert len(lines) >= 6
    assert _primary(lines) == (None, None)
    assert all(default_matcher().match_line(line) is None for line in lines)


def test_the_pre_stage2_exit_without_a_reboot_vetoes_it() -> None:
    assert _primary([OLD_TERM, OLD_KILL]) == (PLANNED, RULE)
    assert _primary([OLD_TERM, OLD_KILL, OLD_PIVOT_FAILED]) == (None, None)


@pytest.mark.parametrize(
    "line",
    [
        "[AE-COBRA-STOP] sending TERM to remaining processes on :7419 and :7418",  # constructed: another tool's words
        "Sending TERM to remaining processes",  # constructed: without kill_remaining()'s ' ...'
        "Thu May  5 21:49:02 UTC 2022 upgrade: Commencing upgrade. Closing all shell sessions.",  # fmt: sysupgrade
    ],
)
def test_look_alikes(line: str) -> None:
    assert default_matcher().match_line(line) is None


@pytest.mark.parametrize("excerpt", ["kb-595", "kb-596"])
def test_kureds_drain_is_not_the_reboot(excerpt: str) -> None:
    """Round 15's kured excerpts end at 'Draining node …': the drain can fail (1.6: log.Fatalf, then the lock released
    at restart; later: 'Unable to cordon or drain …, will release lock and retry') or never end (--drain-timeout 0,
    a PodDisruptionBudget), so no reboot need follow (kubereboot/kured#17, #44: nodes drained every hour, never
    rebooted). kured's executing line ('Commanding reboot for node: ',
    ops.kured_commanding_reboot) is not in them: they stay misses."""
    assert ROWS[excerpt]["class"] == PLANNED
    assert any("Draining node " in line for line in ROWS[excerpt]["lines"])
    assert _primary(ROWS[excerpt]["lines"]) == (None, None)


def test_the_detector_passes_the_logged_stage2_lines_only() -> None:
    for line in (*PR_11579[3:5], _real("kb-617", "upgrade: Sending KILL")):
        assert classify_line(line) == "planned", line
    for line in (PR_11579[0], PR_11579[2], "[    7.432184] procd: - watchdog -"):
        assert classify_line(line) is None, line
