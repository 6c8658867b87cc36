"""`nodeheal bench audit-read`, a tiny run: both kinds of durable read read every record, and the reads as they are
now never wait on their own acknowledgements. The numbers themselves belong in docs/BENCHMARKS.md."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nodeheal.cli.main import cli

pytestmark = pytest.mark.nats


def test_bench_audit_read_reads_every_record_both_ways() -> None:
    result = CliRunner().invoke(cli, ["bench", "audit-read", "--records", "200", "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["before"]["records_read"] == report["now"]["records_read"] == [200]
    assert report["now"]["reads_that_waited_on_their_own_acks"] == 0
    assert report["now"]["records_per_s"] > 0
