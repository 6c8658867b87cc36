"""A demo that cannot finish says why in one line, writes what it measured, and raises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from nodeheal.sim.demo import DemoConfig, DemoFailedError, run_demo
from nodeheal.sim.embedded import free_port


async def test_no_nats_server_is_one_line_and_a_written_partial_report(tmp_path: Path) -> None:
    cfg = DemoConfig(
        nodes=10,
        nats_url=f"nats://127.0.0.1:{free_port()}",  # nothing listens there
        connect_timeout_s=1.0,
        report_path=tmp_path / "report.html",
        run_dir=tmp_path / "run",
        quiet=True,
    )
    with pytest.raises(DemoFailedError) as failed:
        await run_demo(cfg, console=Console(quiet=True))
    reason = failed.value.reason
    assert "\n" not in reason
    assert reason.startswith("connecting to NATS:") and "no NATS server answered" in reason
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["failed"] == reason and written["stage"] == "connecting to NATS"
    failure = (tmp_path / "run" / "failure.txt").read_text()
    assert failure.startswith(reason) and "Traceback (most recent call last)" in failure
