"""Ctrl-C stops a demo within seconds, as a terminal sends it (SIGINT to the whole process group: the
demo, its nats-server, services and probe shards), and what the run measured so far is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.nats]


def test_ctrl_c_stops_the_demo_within_seconds_and_writes_what_it_measured(tmp_path: Path) -> None:
    report = tmp_path / "demo.html"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nodeheal.cli.main",
            "demo",
            "--nodes",
            "20",
            "--sim-processes",
            "2",
            "--duration",
            "60",
            "--report",
            str(report),
            "--run-dir",
            str(tmp_path / "run"),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a shell's foreground job
    )
    try:
        log = tmp_path / "run" / "nats-server.log"
        deadline = time.monotonic() + 60
        while not log.exists() and time.monotonic() < deadline:  # the run has started its parts
            time.sleep(0.2)
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert took < 15.0, took  # the demo gives its parts 5 s to stop, then leaves without them
    assert "interrupted by SIGINT" in err.decode()
    measured = json.loads(report.with_suffix(".json").read_text())
    assert measured["failed"].startswith("interrupted by SIGINT while "), measured["failed"]
    assert measured["stage"]
