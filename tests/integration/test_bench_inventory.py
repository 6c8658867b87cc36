"""`nodeheal bench inventory`, a tiny run: the real watcher's apply loop writes each Node's three records, a
restarted watcher writes nothing for unchanged Nodes (the same run shows what the store wrote before it read the
bucket), and a service's load reads every record. The numbers themselves belong in docs/BENCHMARKS.md."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nodeheal.cli.main import cli

pytestmark = pytest.mark.nats


def test_bench_inventory_counts_what_a_restart_writes() -> None:
    result = CliRunner().invoke(cli, ["bench", "inventory", "--nodes", "150", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["keys"] == {"node": 150, "claim": 150, "instance": 150}
    assert report["restart_list_without_load_updates"] == 450  # every record, claim and index written again
    assert report["restart_list_updates"] == 0
    assert report["service_load_records"] == 150  # the load read every node once
    # each stage measured (seconds to four decimals: a 150-node load takes milliseconds; rounded to two, it read 0.0)
    assert min(report["first_list_one_by_one_s"], report["first_list_s"], report["service_load_s"]) > 0
