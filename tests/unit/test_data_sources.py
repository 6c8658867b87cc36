"""The test data stands alone: every sample names its public source, and the simulator's copy is the same."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"


def test_every_cloud_event_sample_is_named_in_the_readme() -> None:
    readme = (DATA / "README.md").read_text()
    files = sorted(p.name for p in (DATA / "cloud-events").iterdir())
    assert files
    assert [f for f in files if f"`{f}`" not in readme] == []


def test_every_kernel_log_sample_names_a_public_source() -> None:
    rows = [json.loads(line) for line in (DATA / "kernel-log-samples.jsonl").read_text().splitlines() if line]
    assert len(rows) == 49
    assert [r["class"] for r in rows if not str(r.get("source", "")).startswith("https://")] == []


def test_the_simulator_ships_the_same_kernel_log_samples() -> None:
    shipped = ROOT / "sim" / "src" / "nodeheal" / "sim" / "data" / "kernel-log-samples.jsonl"
    assert shipped.read_bytes() == (DATA / "kernel-log-samples.jsonl").read_bytes()


def test_no_tracked_file_names_a_path_outside_the_repository() -> None:
    # spelled in parts so this file does not name an outside path itself
    patterns = ["../" + "shared", "/" + "work/", "shared" + "/data", "shared" + "/reference"]
    args = ["git", "grep", "-n", "-F"]
    for p in patterns:
        args += ["-e", p]
    # this file names the patterns it looks for
    found = subprocess.run(
        [*args, "--", ".", ":!tests/unit/test_data_sources.py"], cwd=ROOT, capture_output=True, text=True
    )
    if found.returncode == 128:
        pytest.skip("not a git checkout")
    assert found.stdout == ""
