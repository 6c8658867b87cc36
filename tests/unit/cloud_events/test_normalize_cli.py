"""`nodeheal normalize` as an operator runs it: a subprocess, JSON lines out, exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "data" / "cloud-events"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "nodeheal.cli.main", "normalize", *args], input=stdin, capture_output=True, timeout=60
    )


def test_named_source_prints_one_json_object_per_line() -> None:
    result = run("--source", "alibaba-api", str(DATA / "alibaba-api-describeinstancehistoryevents-1.json"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    events = [json.loads(line) for line in lines]
    assert [(e["provider_event_id"], e["phase"]) for e in events] == [
        ("e-uf64yvznlao4jl2c****", "completed"),
        ("e-uf61cbvp0w8x2xfx****", "avoided"),
    ]
    assert events[0]["schema"] == "nodeheal.cloud/v1"
    assert events[0]["raw"]["EventId"] == "e-uf64yvznlao4jl2c****"


def test_auto_from_stdin() -> None:
    raw = (DATA / "alibaba-cms-systemmaintenance-redeploy-scheduled-1-reconstructed.json").read_bytes()
    result = run("--source", "auto", "--no-raw", "-", stdin=raw)
    assert result.returncode == 0, result.stderr
    (event,) = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert (event["action"], event["phase"], event["local_data_loss"]) == ("redeploy", "scheduled", True)
    assert "raw" not in event


def test_azure_documents_in_order_show_the_synthesised_completion(tmp_path: Path) -> None:
    doc = json.loads((DATA / "azure-imds-redeploy-scheduled-1.json").read_text())
    started = {
        **doc,
        "DocumentIncarnation": 2,
        "Events": [{**doc["Events"][0], "EventStatus": "Started", "NotBefore": ""}],
    }
    empty = {"DocumentIncarnation": 3, "Events": []}
    path = tmp_path / "docs.json"
    path.write_text(json.dumps([doc, started, empty]))
    result = run("--source", "azure-imds", str(path))
    assert result.returncode == 0, result.stderr
    phases = [json.loads(line)["phase"] for line in result.stdout.decode().splitlines()]
    assert phases == ["scheduled", "in_progress", "completed"]


def test_garbage_exits_2_with_a_clear_message() -> None:
    result = run("--source", "alibaba-cms", "-", stdin=b'{"name": "Instance:X:Scheduled", "content": ')
    assert result.returncode == 2
    assert result.stdout == b""
    err = result.stderr.decode()
    assert "alibaba-cms payload" in err and "not JSON" in err


def test_wrong_shape_exits_2_naming_the_field() -> None:
    result = run("--source", "aws-eventbridge", "-", stdin=b'{"id": "1", "source": "aws.ec2"}')
    assert result.returncode == 2
    assert "missing field 'detail-type'" in result.stderr.decode()


def test_auto_that_cannot_tell_exits_2() -> None:
    result = run("--source", "auto", "-", stdin=b'{"surprise": true}')
    assert result.returncode == 2
    assert "pass --source" in result.stderr.decode()


def test_help_lists_the_sources() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert b"alibaba-eventbridge" in result.stdout and b"auto" in result.stdout
