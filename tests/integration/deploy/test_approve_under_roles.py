"""`nodeheal approve` with a credential that may not write approvals (the read-only `reader`), against a
nats-server with the deployed per-role authorization (deploy/nats/natsauth.py): a one-line error naming the
permission and the credential to use, exit non-zero, no traceback, nothing written. Before, nats-py's
permission violation only made the write time out and the CLI ended in a `TimeoutError` traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import pytest
from click.testing import CliRunner
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from nodeheal.cli.main import cli
from nodeheal.remediator.audit import AuditLog
from nodeheal.remediator.control import approval_key
from nodeheal.schemas.audit import RemediationRecord
from tests.integration.deploy.natsauth_loader import load_natsauth, per_role_server

pytestmark = pytest.mark.nats

ACTION_ID = "act-00112233445566778899aabbccddeeff"


async def _replace_waits(url: str, tmp_path: Path) -> None:
    """The remediator (its own role) records the replace that waits for approval, as its ladder does."""
    remediator = await nats.connect(
        url,
        user_credentials=str(tmp_path / "remediator.creds"),
        inbox_prefix=load_natsauth().inbox_prefix("remediator"),
    )
    try:
        await AuditLog(remediator.jetstream(), stream="AUDIT", prefix="nodeheal", timeout_s=5.0).record(
            RemediationRecord(
                cluster="c1",
                node="n1",
                action_id=ACTION_ID,
                action="replace",
                phase="awaiting_approval",
                reason=f"replace needs approval: nodeheal approve {ACTION_ID}",
                actor="r1",
            )
        )
    finally:
        await remediator.close()


async def test_approve_with_the_reader_credential_says_which_credential_to_use(tmp_path: Path) -> None:
    async with per_role_server(tmp_path, "remediator", "reader") as (server, nc, _admin):
        await _replace_waits(server.url, tmp_path)
        args = ["approve", ACTION_ID, "--nats-url", server.url, "--creds", str(tmp_path / "reader.creds")]
        result = await asyncio.to_thread(CliRunner().invoke, cli, args)
        control = await nc.jetstream().key_value("nodeheal-control")
        with pytest.raises(KeyNotFoundError):
            await control.get(approval_key(ACTION_ID))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "refused" in lines[0] and f"approval.{ACTION_ID}" in lines[0]
    assert "reader.creds" in lines[0] and "admin.creds" in lines[0]


async def test_pause_with_the_reader_credential_says_which_credential_to_use(tmp_path: Path) -> None:
    """The same for the kill switch: `nodeheal pause` with a credential that may not write it is one line naming
    the credential and admin.creds, exit 1, the switch untouched (before: a traceback, or "bucket not found")."""
    async with per_role_server(tmp_path, "reader") as (server, nc, _admin):
        args = ["pause", "--reason", "incident 7", "--nats-url", server.url, "--creds", str(tmp_path / "reader.creds")]
        result = await asyncio.to_thread(CliRunner().invoke, cli, args)
        control = await nc.jetstream().key_value("nodeheal-control")
        with pytest.raises(KeyNotFoundError):
            await control.get("pause")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "refused" in lines[0] and "reader.creds" in lines[0] and "admin.creds" in lines[0], lines[0]
    assert "Pausing or resuming needs" in lines[0], lines[0]


async def test_a_refused_approve_or_pause_ends_at_the_refusal_not_at_the_requests_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answers a refused request with nothing: the client learns of the refusal from the error it
    reports on the connection. `approve` and `pause` now end at that report; before, each waited out the request's
    timeout (5 s) first. Here the CLI's requests time out after an hour: each command must still end, with the
    refusal, long before (the bound below is a hang guard, not a measurement)."""
    jetstream = Client.jetstream

    def patient(self: Client, **opts: Any) -> Any:
        return jetstream(self, **{"timeout": 3600.0, **opts})

    monkeypatch.setattr(Client, "jetstream", patient)
    async with per_role_server(tmp_path, "remediator", "reader") as (server, _nc, _admin):
        await _replace_waits(server.url, tmp_path)
        creds = ["--nats-url", server.url, "--creds", str(tmp_path / "reader.creds")]
        for args in (["approve", ACTION_ID, *creds], ["pause", "--reason", "incident 7", *creds]):
            run = asyncio.ensure_future(asyncio.to_thread(CliRunner().invoke, cli, args))
            done, _ = await asyncio.wait({run}, timeout=60.0)
            assert done, f"`nodeheal {args[0]}` still waits on its refused request"
            result = run.result()
            assert result.exit_code == 1, result.output
            assert "refused" in result.output and "admin.creds" in result.output, result.output
