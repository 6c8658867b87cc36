"""`nodeheal <command>` imports that command's module only: `diagnose-log` (a person's log on a
workstation, no cluster) starts without the Kubernetes client, nats-py or faststream, which `batch`,
`approve` and the services need. A fresh interpreter, as a person's shell starts one."""

from __future__ import annotations

import json
import subprocess
import sys

from nodeheal.cli.main import SUBCOMMANDS, cli

PROBE = """
import json, sys
from nodeheal.cli.main import cli
try:
    cli(["diagnose-log", "--help"], standalone_mode=False)
finally:
    print(json.dumps(sorted(m for m in ("kubernetes", "nats", "faststream", "nodeheal.cli.batch") if m in sys.modules)))
"""


def test_diagnose_log_starts_without_the_cluster_clients() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_every_listed_command_loads_under_its_name() -> None:
    assert sorted(cli.commands) == sorted(SUBCOMMANDS)  # type: ignore[attr-defined]
    for name in SUBCOMMANDS:
        assert cli.commands[name].name == name  # type: ignore[attr-defined]
