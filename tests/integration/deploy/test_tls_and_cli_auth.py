"""NATS with TLS *and* the per-role credentials of deploy/nats/natsauth.py, on a real nats-server:

- the CLI (`streams apply`, `pause`, `resume`, `audit tail`) as the admin user, configured only the way
  the provisioning Job configures it (`NATS_CREDS`, `NATS_CA` in the environment);
- the detector and the remediator as their own users over TLS (the faststream broker gets creds and the
  CA through `make_broker`; the detector's probe pull steps aside for nats-py), ready on /readyz;
- a client without the CA is refused by TLS verification, not silently downgraded;
- `nodeheal up --role-creds DIR --tls-ca CA` provisions as admin and runs a service as its own role.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from click.testing import CliRunner

from nodeheal.cli.main import cli
from nodeheal.sim.bench.secure import self_signed_tls
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.deploy.natsauth_loader import load_natsauth
from tests.integration.deploy.role_services import running_as_roles

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def _connect_without_ca(url: str, creds: Path) -> None:
    await nats.connect(
        url,
        user_credentials=str(creds),
        tls=ssl.create_default_context(),
        allow_reconnect=False,
        connect_timeout=3,
        max_reconnect_attempts=0,
    )


def test_cli_and_services_over_tls_with_role_credentials(tmp_path: Path) -> None:
    """Synchronous on purpose: the CLI runs its own event loop (asyncio.run)."""
    natsauth = load_natsauth()
    bundle = natsauth.build()
    ca, cert, key = self_signed_tls(tmp_path)
    conf = tmp_path / "nats.conf"
    conf.write_text(bundle.server_config() + f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n')
    server_log = tmp_path / "nats.log"
    admin_creds = tmp_path / "admin.creds"
    admin_creds.write_text(bundle.user_creds("admin"))

    with EmbeddedNats(config_file=str(conf), log_file=str(server_log)) as server:
        # without the CA the server's certificate is not trusted: refused, never downgraded to plain text
        with pytest.raises((ssl.SSLError, OSError, nats.errors.NoServersError)):
            asyncio.run(_connect_without_ca(server.url, admin_creds))

        # the CLI exactly as the provisioning Job runs it: creds and CA only in the environment
        runner = CliRunner()
        env = {"NATS_CREDS": str(admin_creds), "NATS_CA": str(ca), "NATS_URL": server.url}
        result = runner.invoke(cli, ["streams", "apply", "--replicas", "1"], env=env)
        assert result.exit_code == 0, result.output
        assert "AUDIT" in result.output
        for args in (["pause", "--reason", "tls test", "--by", "ci"], ["resume", "--by", "ci"], ["audit", "tail"]):
            result = runner.invoke(cli, args, env=env)
            assert result.exit_code == 0, (args, result.output)
        # the same through the options instead of the environment
        result = runner.invoke(
            cli,
            ["pause", "--reason", "flags", "--nats-url", server.url, "--creds", str(admin_creds), "--tls-ca", str(ca)],
            env={"NATS_CREDS": "", "NATS_CA": "", "NATS_URL": ""},
        )
        assert result.exit_code == 0, result.output
        missing = runner.invoke(cli, ["resume", "--nats-url", server.url, "--creds", str(tmp_path / "nope.creds")])
        assert missing.exit_code == 2
        assert "nope.creds" in missing.output

        with running_as_roles(
            ("detector", "remediator"), url=server.url, natsauth=natsauth, bundle=bundle, directory=tmp_path, tls_ca=ca
        ):
            pass  # both became ready over TLS as their own users
    # the server's top-level `tls` block makes TLS mandatory for every client connection
    assert [line for line in server_log.read_text().splitlines() if "Violation" in line] == []


def test_up_runs_services_as_their_roles_over_tls(tmp_path: Path) -> None:
    """`nodeheal up` against a server with deploy/nats's authorization and TLS: it provisions as the admin
    of the `natsauth.py init` directory and starts the detector as its own role; `running` is printed only
    once the service answers /readyz. Ctrl-C stops it cleanly."""
    natsauth = load_natsauth()
    bundle = natsauth.build()
    ca, cert, key = self_signed_tls(tmp_path)
    auth_dir = tmp_path / "auth"
    natsauth.write_bundle(bundle, auth_dir)  # what `natsauth.py init --out DIR` writes
    conf = tmp_path / "nats.conf"
    conf.write_text((auth_dir / "auth.conf").read_text() + f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n')
    server_log = tmp_path / "nats.log"
    with EmbeddedNats(config_file=str(conf), log_file=str(server_log)) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NODEHEAL_", "NATS_"))}
        cmd = [sys.executable, "-m", "nodeheal.cli.main", "up", "--nats-url", server.url, "--service", "detector"]
        cmd += ["--role-creds", str(auth_dir), "--tls-ca", str(ca), "--run-dir", str(tmp_path / "logs")]
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as up:
            assert up.stdout is not None
            lines: list[str] = []
            for line in up.stdout:  # the process ends (and the loop with it) if start-up fails
                lines.append(line)
                if line.startswith("running"):
                    break
            assert any(line.startswith("running") for line in lines), "".join(lines) + _tail(tmp_path / "logs")
            up.send_signal(signal.SIGINT)
            assert up.wait(timeout=30) == 0
        streams = asyncio.run(_stream_names(server.url, auth_dir / "admin.creds", ca))
    assert "PROBES" in streams and "AUDIT" in streams
    assert [line for line in server_log.read_text().splitlines() if "Violation" in line] == []


def _tail(logs: Path) -> str:
    return "".join(p.read_text(errors="replace")[-3000:] for p in sorted(logs.glob("*.log")))


async def _stream_names(url: str, creds: Path, ca: Path) -> set[str]:
    tls = ssl.create_default_context(cafile=str(ca))
    nc = await nats.connect(url, user_credentials=str(creds), tls=tls, allow_reconnect=False)
    try:
        return {info.config.name for info in await nc.jetstream().streams_info() if info.config.name}
    finally:
        await nc.close()
