"""`nodeheal up --role-creds DIR` refuses a directory without a selected service's .creds before it
connects anywhere, naming the missing file."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from nodeheal.cli.main import cli


def test_role_creds_without_a_services_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "detector.creds").write_text("not read before the check\n")
    args = ["up", "--nats-url", "nats://127.0.0.1:1", "--role-creds", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--service", "detector", "--service", "diagnoser"])
    assert result.exit_code == 2
    assert "has no diagnoser.creds" in result.output and "detector.creds" not in result.output
