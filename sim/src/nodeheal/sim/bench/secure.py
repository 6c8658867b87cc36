"""The production NATS configuration for benchmarks: a nats-server with TLS (a throwaway CA and server
certificate) and the per-role decentralized auth of `deploy/nats/natsauth.py`, and how each bench
client connects to it (its role's `.creds`, the CA, its role's inbox prefix).

`natsauth.py` is the operator's standalone script in the repository, not part of a package, so it is
loaded from the checkout (the benchmarks run from one); `--insecure` measures a plain server instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import ipaddress
import ssl
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import nats
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nats.aio.client import Client

from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats

NATSAUTH = Path("deploy") / "nats" / "natsauth.py"


@dataclass(frozen=True)
class BenchAuth:
    """How bench clients connect. Empty: plain TCP, no credentials (the `--insecure` configuration)."""

    creds: dict[str, str] = field(default_factory=dict)
    """role → path of its .creds file"""
    ca_file: str | None = None
    inboxes: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, bool]:
        return {"tls": self.ca_file is not None, "creds": bool(self.creds)}

    def options(self, role: str) -> dict[str, Any]:
        if not self.creds:
            return {}
        options: dict[str, Any] = {"user_credentials": self.creds[role], "inbox_prefix": self.inboxes[role]}
        if self.ca_file:
            options["tls"] = ssl.create_default_context(cafile=self.ca_file)
        return options

    async def connect(self, url: str, role: str, **kwargs: Any) -> Client:
        return await nats.connect(url, **self.options(role), **kwargs)

    def settings(self, role: str, **fields: Any) -> NatsSettings:
        """Settings for a service's own code (the detector runtime) under `role`."""
        if self.creds:
            fields.update(creds_file=self.creds[role], inbox_prefix=self.inboxes[role], tls_ca_file=self.ca_file)
        return NatsSettings(**fields)


def find_natsauth(start: Path | None = None) -> Path:
    """`deploy/nats/natsauth.py` of the checkout this runs in (from the working directory or this file up)."""
    for base in (start or Path.cwd(), Path(__file__).resolve()):
        for directory in (base, *base.parents):
            candidate = directory / NATSAUTH
            if candidate.is_file():
                return candidate
    msg = (
        f"the production configuration needs {NATSAUTH} of a nodeheal checkout (per-role credentials);"
        " run from the repository, or pass --insecure to measure a plain server"
    )
    raise FileNotFoundError(msg)


def load_natsauth() -> ModuleType:
    name = "nodeheal_deploy_natsauth"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, find_natsauth())
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def self_signed_tls(out: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost: (ca, cert, key) PEM paths."""
    now = dt.datetime.now(tz=dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("nodeheal-bench-ca"))
        .issuer_name(_name("nodeheal-bench-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (out / "ca.crt", out / "tls.crt", out / "tls.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@contextlib.contextmanager
def production_server(roles: tuple[str, ...] = ("admin", "prober", "detector")) -> Iterator[tuple[str, BenchAuth]]:
    """A nats-server as `deploy/` runs it (TLS mandatory, decentralized auth, one user per role) for the
    lifetime of the block: yields its URL and the roles' connection settings."""
    natsauth = load_natsauth()
    with tempfile.TemporaryDirectory(prefix="nodeheal-bench-") as tmp:
        out = Path(tmp)
        bundle = natsauth.build()
        ca, cert, key = self_signed_tls(out)
        conf = out / "nats.conf"
        conf.write_text(bundle.server_config() + f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n')
        creds: dict[str, str] = {}
        for role in roles:
            path = out / f"{role}.creds"
            path.write_text(bundle.user_creds(role))
            path.chmod(0o600)
            creds[role] = str(path)
        auth = BenchAuth(creds=creds, ca_file=str(ca), inboxes={r: natsauth.inbox_prefix(r) for r in roles})
        with EmbeddedNats(config_file=str(conf), log_file=str(out / "nats.log")) as server:
            yield server.url, auth
