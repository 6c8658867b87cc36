"""NATS with TLS *and* the per-role credentials of deploy/nats/natsauth.py, on a real nats-server:

- the CLI (`streams apply`, `pause`, `resume`, `audit tail`) as the admin user, configured only the way
  the provisioning Job configures it (`NATS_CREDS`, `NATS_CA` in the environment);
- the detector and the remediator as their own users over TLS (the faststream broker gets creds and the
  CA through `make_broker`; the detector's probe pull steps aside for nats-py), ready on /readyz;
- a client without the CA is refused by TLS verification, not silently downgraded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nats
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodeheal.cli.main import cli
from nodeheal.sim.embedded import EmbeddedNats, free_port
from tests.integration.deploy.natsauth_loader import load_natsauth

pytestmark = [pytest.mark.nats, pytest.mark.slow]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certs(out: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost: (ca, cert, key) PEM paths."""
    now = dt.datetime.now(tz=dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("nodeheal-test-ca"))
        .issuer_name(_name("nodeheal-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("nats"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (out / "ca.crt", out / "tls.crt", out / "tls.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


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
    ca, cert, key = make_certs(tmp_path)
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

        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        services = {
            "detector": (["-m", "nodeheal.detector"], "NODEHEAL_DETECTOR_", {}),
            "remediator": (
                ["-m", "nodeheal.remediator"],
                "NODEHEAL_REMEDIATOR_",
                {"KUBE__ENABLED": "false", "CLOUD__PROVIDER": "none"},
            ),
        }
        try:
            for name, (args, prefix, extra) in services.items():
                creds = tmp_path / f"{name}.creds"
                creds.write_text(bundle.user_creds(name))
                port = free_port()
                penv = {k: v for k, v in os.environ.items() if not k.startswith(("NODEHEAL_", "NATS_"))}
                penv.update(
                    {
                        f"{prefix}NATS__URL": server.url,
                        f"{prefix}NATS__CREDS_FILE": str(creds),
                        f"{prefix}NATS__TLS_CA_FILE": str(ca),
                        f"{prefix}NATS__INBOX_PREFIX": natsauth.inbox_prefix(name),
                        f"{prefix}HTTP_PORT": str(port),
                        f"{prefix}CLUSTER": "c1",
                        **{prefix + k: v for k, v in extra.items()},
                    }
                )
                log = (tmp_path / f"{name}.log").open("wb")
                procs[name] = (
                    subprocess.Popen([sys.executable, *args], env=penv, stdout=log, stderr=subprocess.STDOUT),
                    port,
                )
            waiting = set(procs)
            deadline = time.monotonic() + 90
            while waiting and time.monotonic() < deadline:
                for name in sorted(waiting):
                    proc, port = procs[name]
                    assert proc.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
                    if _ready(port):
                        waiting.discard(name)
                time.sleep(0.2)
            assert not waiting, {n: (tmp_path / f"{n}.log").read_text()[-1500:] for n in waiting}
        finally:
            for proc, _ in procs.values():
                proc.terminate()
            for proc, _ in procs.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    # the server's top-level `tls` block makes TLS mandatory for every client connection
    assert [line for line in server_log.read_text().splitlines() if "Violation" in line] == []
