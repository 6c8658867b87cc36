"""PID 1's shutdown stop run is one data file (nodeheal.schemas `shutdown_stop_run.json`) that the detector's
kernel-log screen and the diagnoser's knowledge base both read (docs/diagnoser.md "Evidence across lines",
docs/detector.md). These tests fail when either side drifts from it: a unit, a threshold, the skip or the veto
restated by hand in one service and not the other.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from nodeheal.detector import kernel
from nodeheal.diagnoser.kb import default_matcher
from nodeheal.diagnoser.kb.loader import Run
from nodeheal.schemas.shutdown import DATA_FILE, StopRunItem, parse_stop_run, shutdown_stop_run

SPEC = shutdown_stop_run()
ROOT = Path(__file__).resolve().parents[2]


def kb_run() -> Run:
    return next(run for run in default_matcher().kb.runs if run.id == "ops.shutdown_stop_run")


def kb_item(line: str) -> str | None:
    """The key of the KB run's item a line stops (the loop of Matcher.run_finding), None if none or skipped."""
    run = kb_run()
    if run.screen.search(line) is None or (run.skip is not None and run.skip.search(line)):
        return None
    return next((item.key for item in run.items if item.stop.search(line)), None)


def stop_lines(item: StopRunItem) -> list[str]:
    """Every way PID 1 says it stops the item (systemd's unit status wordings, old and 253+), console and journal."""
    if not item.units:  # an item with its own regexes: the mount and swap stop lines
        return {
            "mounts": ["systemd[1]: Unmounting /boot...", "[  OK  ] Unmounted /var/lib/kubelet."],
            "swap devices": ["systemd[1]: Deactivating swap /dev/sda2...", "Deactivated swap /swapfile."],
        }[item.key]
    lines = []
    for name in (*item.units, *item.descriptions):
        verb = "Stopped target" if item.units[0].endswith(".target") else "Stopped"
        lines += [
            f"systemd[1]: Stopping {name}...",
            f"[  OK  ] {verb} {name}.",
            f"Mar 02 10:00:01 n systemd[1]: Stopped {name}.",
        ]
    lines += [f"[  OK  ] Stopped {item.units[0]} - {d}." for d in item.descriptions]
    return lines


def test_the_data_file_ships_with_the_schemas_package() -> None:
    """Package data: importlib finds it next to the module, and the wheel target packages the whole
    src/nodeheal tree (no include / exclude pattern that would leave a .json out)."""
    assert resources.files("nodeheal.schemas").joinpath(DATA_FILE).is_file()
    wheel = tomllib.loads((ROOT / "schemas/pyproject.toml").read_text(encoding="utf-8"))["tool"]["hatch"]["build"]
    assert wheel["targets"]["wheel"]["packages"] == ["src/nodeheal"]
    assert not {"include", "exclude", "only-include", "artifacts"} & (set(wheel) | set(wheel["targets"]["wheel"]))
    assert (ROOT / "schemas/src/nodeheal/schemas" / DATA_FILE).is_file()


def test_the_knowledge_base_run_is_the_shared_file() -> None:
    run = kb_run()
    assert run.min_items == SPEC.min_items and run.window_s == SPEC.window_s
    assert run.contains == SPEC.contains
    assert [(i.key, i.stop.pattern, i.start.pattern) for i in run.items] == [
        (i.key, i.stop, i.start) for i in SPEC.items
    ]
    assert run.skip is not None and run.skip.pattern == SPEC.skip
    assert run.veto is not None and run.veto.pattern == SPEC.veto


def test_the_detector_screen_is_the_shared_file() -> None:
    assert SPEC.min_items == kernel.STOP_RUN_MIN
    assert kernel._INITRD.pattern == SPEC.veto and kernel._USER_MANAGER.pattern == SPEC.skip


@pytest.mark.parametrize("item", SPEC.items, ids=lambda i: i.key)
def test_both_services_count_every_stop_line_of_an_item_as_that_item(item: StopRunItem) -> None:
    for line in stop_lines(item):
        assert kernel.stop_run_item(line) == item.key, line
        assert kb_item(line) == item.key, line


@pytest.mark.parametrize(
    "line",
    [
        # services a restart or an upgrade stops; targets a user manager stops at logout; a user manager's line
        "systemd[1]: Stopped Kubernetes Kubelet.",
        "systemd[1]: Stopping containerd container runtime...",
        "systemd[1]: Stopped target Basic System.",
        "systemd[1]: Stopped target Timers.",
        "systemd[2126]: Stopped target Local File Systems.",
        "systemd[1]: Starting Apply Kernel Variables...",
        "systemd[1]: Mounted /boot.",
    ],
)
def test_neither_service_counts_what_is_no_item(line: str) -> None:
    assert kernel.stop_run_item(line) is None
    assert kb_item(line) is None


def test_a_bad_data_file_is_refused() -> None:
    text = (resources.files("nodeheal.schemas") / DATA_FILE).read_text(encoding="utf-8")
    good = json.loads(text)
    for key, value, problem in (
        ("min_items", 1, "min_items"),
        ("window_s", 0, "window_s"),
        ("items", [*good["items"], good["items"][0]], "same key"),
        ("veto", "", "regex"),
    ):
        with pytest.raises(ValueError, match=problem):
            parse_stop_run(json.dumps({**good, key: value}))
    with pytest.raises(re.error):
        parse_stop_run(json.dumps({**good, "skip": "("}))
