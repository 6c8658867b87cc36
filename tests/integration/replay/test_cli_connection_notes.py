"""What the read-only commands say about their NATS connection, under the deployed per-role authorization.

- A credential that may not read the streams (an operator who took the detector's): the command's error names
  the refusal and the reader credential; before, `replay` ended with a bare "nats: timeout".
- A server restart under `audit tail --follow`: one line for the disconnect and one for the reconnect; before,
  nats-py's default error logging wrote a traceback per failed reconnect attempt (590 stderr lines, 21
  tracebacks for an 11 s restart)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import nats
import pytest
from click.testing import CliRunner

from nodeheal.cli.main import cli
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.deploy.natsauth_loader import load_natsauth, per_role_server
from tests.unit.replay.factories import record, subject_of

pytestmark = pytest.mark.nats


async def test_a_credential_that_may_not_read_is_named_in_the_error(tmp_path: Path) -> None:
    async with per_role_server(tmp_path, "detector") as (server, _nc, _admin):
        env = {"NATS_URL": server.url, "NATS_CREDS": str(tmp_path / "detector.creds"), "NATS_CA": ""}
        r = await asyncio.to_thread(CliRunner().invoke, cli, ["replay", "--since", "1h", "--all", "--json"], env=env)
    assert r.exit_code == 1
    assert "the NATS server refused this user" in r.output and "permissions violation" in r.output
    assert "reader.creds" in r.output and str(tmp_path / "detector.creds") in r.output


async def _publish(url: str, creds: Path, first: int, n: int) -> None:
    for _ in range(80):  # the restarted server may not have its JetStream back yet
        try:
            rem = await nats.connect(url, user_credentials=str(creds), inbox_prefix="_INBOX.remediator")
        except Exception:
            await asyncio.sleep(0.25)
            continue
        try:
            for i in range(first, first + n):
                r = record(f"node-{i}", t=i, phase="intent", action_id=f"act-{i}")
                await publish_model(rem.jetstream(), subject_of(r, "nodeheal"), r, msg_id=r.id)
            return
        except Exception:
            await asyncio.sleep(0.25)
        finally:
            await rem.close()
    raise AssertionError("could not publish")


async def test_a_server_restart_under_follow_is_said_in_two_lines(tmp_path: Path) -> None:
    bundle = load_natsauth().build()
    conf = tmp_path / "auth.conf"
    conf.write_text(bundle.server_config())
    for role in ("admin", "remediator", "reader"):
        (tmp_path / f"{role}.creds").write_text(bundle.user_creds(role))
    store = str(tmp_path / "store")
    server = EmbeddedNats(store_dir=store, config_file=str(conf), log_file=str(tmp_path / "nats.log")).start()
    restarted: EmbeddedNats | None = None
    proc = None
    try:
        admin = await nats.connect(server.url, user_credentials=str(tmp_path / "admin.creds"))
        await apply_topology(admin.jetstream(), NatsSettings(url=server.url).topology())
        await admin.close()
        await _publish(server.url, tmp_path / "remediator.creds", 0, 2)
        env = {**os.environ, "NATS_URL": server.url, "NATS_CREDS": str(tmp_path / "reader.creds"), "NATS_CA": ""}
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "nodeheal.cli.main", "audit", "tail", "--follow", "--json"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        before = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))["action_id"] for _ in range(2)]
        server.stop()
        await asyncio.sleep(4.0)  # reconnect attempts every half second meet a closed port
        restarted = EmbeddedNats(
            port=server.port, store_dir=store, config_file=str(conf), log_file=str(tmp_path / "nats.log")
        ).start()
        await _publish(restarted.url, tmp_path / "remediator.creds", 2, 2)
        after = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))["action_id"] for _ in range(2)]
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        proc = None
    finally:
        if proc is not None:
            proc.kill()
            await proc.wait()
        for s in (server, restarted):
            if s is not None:
                s.stop()
    text = err.decode()
    assert before + after == ["act-0", "act-1", "act-2", "act-3"]
    assert "Traceback" not in text, text[-2000:]
    assert "audit tail: disconnected from NATS; reconnecting" in text
    assert "audit tail: reconnected to NATS" in text
    assert len(text.splitlines()) <= 6, text
