#!/usr/bin/env python3
"""nodeheal's NATS authorization: one permission set per service, and the JWTs that carry them.

NATS decentralized auth (operator → account → user JWTs, nats-server ≥ 2.10) is used because it is
the only mode in which one *permission template* can serve 50,000 node agents: the account holds a
scoped signing key per role, and the agent role's template says

    publish   <prefix>.probe.{{tag(cluster)}}.{{tag(node)}}
    subscribe <prefix>.cmd.{{tag(cluster)}}.{{tag(node)}}

so a node's user JWT carries nothing but two tags; the server expands the template when the user
connects, and no server configuration changes when nodes come and go. Every other service has a
fixed-permission scoped key of its own. Whoever holds a role's signing key seed can mint users of
that role and nothing else (the account key itself stays offline).

This file is deliberately standalone (Python ≥ 3.11 + `cryptography`): operators run it on a
workstation, the permission-matrix test imports it. It produces what `nsc` would produce.

    python deploy/nats/natsauth.py init --out DIR [--prefix nodeheal] [--bucket-prefix nodeheal]
    python deploy/nats/natsauth.py mint-agent --keys DIR --cluster C --node N > node.creds
    python deploy/nats/natsauth.py show [--prefix nodeheal]        # the permission matrix as JSON

It never talks to a server and never prints a seed except into the files it writes.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# ---------------------------------------------------------------------------------------------
# nkeys (https://github.com/nats-io/nkeys): ed25519 keys, base32, a one-byte role prefix, CRC16.

_PREFIX_SEED = 18 << 3
_PREFIX = {"operator": 14 << 3, "account": 0, "user": 20 << 3}


def _crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0)  # CRC-16/XMODEM, the one nkeys uses


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def _unb32(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


@dataclass(frozen=True)
class NKey:
    kind: str  # operator | account | user
    seed_bytes: bytes

    @classmethod
    def create(cls, kind: str) -> NKey:
        return cls(kind=kind, seed_bytes=os.urandom(32))

    @classmethod
    def from_seed(cls, seed: str) -> NKey:
        raw = _unb32(seed.strip())
        body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
        if _crc16(body) != crc:
            msg = "nkey seed has a bad checksum: is the file truncated?"
            raise ValueError(msg)
        prefix = ((body[0] & 7) << 5) | ((body[1] & 0xF8) >> 3)
        kinds = {v: k for k, v in _PREFIX.items()}
        if prefix not in kinds:
            msg = f"nkey seed of unsupported type {prefix}: expected an operator, account or user seed"
            raise ValueError(msg)
        return cls(kind=kinds[prefix], seed_bytes=body[2:])

    @property
    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed_bytes)

    @property
    def public_key(self) -> str:
        raw = bytes([_PREFIX[self.kind]]) + self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return _b32(raw + _crc16(raw).to_bytes(2, "little"))

    @property
    def seed(self) -> str:
        prefix = _PREFIX[self.kind]
        raw = bytes([_PREFIX_SEED | (prefix >> 5), (prefix & 31) << 3]) + self.seed_bytes
        return _b32(raw + _crc16(raw).to_bytes(2, "little"))

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


# ---------------------------------------------------------------------------------------------
# NATS JWT v2 (https://github.com/nats-io/jwt): header.claims.signature, base64url without padding,
# `jti` = base32(sha512/256(claims without jti)).


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def encode_jwt(*, issuer: NKey, subject: str, name: str, nats: dict[str, Any], expires_s: float | None = None) -> str:
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public_key, "name": name, "sub": subject}
    if expires_s is not None:
        claims["exp"] = int(time.time() + expires_s)
    claims["nats"] = nats
    claims["jti"] = _b32(hashlib.new("sha512_256", json.dumps(claims, separators=(",", ":")).encode()).digest())
    header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = _b64url(issuer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{signature}"


def creds_file(*, jwt: str, seed: str) -> str:
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
    )


# ---------------------------------------------------------------------------------------------
# The permission matrix.

ROLES = ("ingest", "agent", "prober", "inventory", "detector", "diagnoser", "remediator", "admin")
"""One NATS user role per deployable part. `admin` is the provisioning Job and people's CLI."""

_TOKEN_OK = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Permissions:
    pub_allow: tuple[str, ...]
    sub_allow: tuple[str, ...]
    pub_deny: tuple[str, ...] = ()
    sub_deny: tuple[str, ...] = ()
    allow_responses: bool = False
    inbox: str = "_INBOX"

    def to_jwt(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pub": {"allow": list(self.pub_allow)} | ({"deny": list(self.pub_deny)} if self.pub_deny else {}),
            "sub": {"allow": list(self.sub_allow)} | ({"deny": list(self.sub_deny)} if self.sub_deny else {}),
            "subs": -1,
            "data": -1,
            "payload": -1,
        }
        if self.allow_responses:
            out["resp"] = {"max": 1, "ttl": 0}
        return out


@dataclass(frozen=True)
class Layout:
    """Names the permissions are written for; mirrors `NatsSettings` (prefix, stream_prefix, bucket_prefix)."""

    prefix: str = "nodeheal"
    stream_prefix: str = ""
    bucket_prefix: str = "nodeheal"
    durables: dict[str, str] = field(default_factory=dict)

    def stream(self, name: str) -> str:
        return f"{self.stream_prefix}{name}"

    def bucket(self, name: str) -> str:
        return f"{self.bucket_prefix}-{name}"


def _consume(stream: str) -> list[str]:
    """What reading `stream` needs: look it up, create/update/inspect consumers on that stream only
    (durable pull consumers and the ordered consumers of replay/restore), fetch, acknowledge
    (ack/nak/term/in-progress all publish to $JS.ACK), flow control, and direct gets of the last
    message per subject (state seeding)."""
    return [
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]


def _kv_read(bucket: str) -> list[str]:
    """Get, keys and watch (an ordered push consumer with flow control) on one bucket."""
    stream = f"KV_{bucket}"
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _kv_write(bucket: str) -> list[str]:
    return [*_kv_read(bucket), f"$KV.{bucket}.>"]


def inbox_prefix(role: str) -> str:
    """Each role gets replies on its own inbox subtree (`NatsSettings.inbox_prefix`, passed to nats-py as
    `inbox_prefix`), so one service cannot read another's request replies or PubAcks. All agents share
    `_INBOX.agent`: an agent could read another agent's probe PubAcks (worthless), never the
    remediator's command replies; a per-node inbox would need the agent to compute its escaped node
    token, which a Kubernetes env var cannot."""
    return f"_INBOX.{role}"


def role_permissions(role: str, layout: Layout | None = None) -> Permissions:
    """The allow lists of one role. Everything not listed is refused by the server."""
    lo = layout or Layout()
    p = lo.prefix
    js_base = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]
    dlq = f"{p}.dlq.*"  # the DLQ subject token is the service name the code chooses; DLQ is write-only for them
    inv = lo.bucket("inventory")
    inbox = inbox_prefix(role)
    own_inbox = [f"{inbox}.>"]
    if role == "ingest":
        return Permissions(
            pub_allow=(f"{p}.cloud.*.*", dlq, *js_base, *_kv_read(inv), *_consume(lo.stream("CLOUD"))),
            sub_allow=tuple(own_inbox),
            inbox=inbox,
        )
    if role == "agent":
        node = "{{tag(cluster)}}.{{tag(node)}}"
        return Permissions(
            pub_allow=(f"{p}.probe.{node}", f"{p}.dlq.node-agent"),
            sub_allow=(f"{p}.cmd.{node}", *own_inbox),
            allow_responses=True,
            inbox=inbox,
        )
    if role == "prober":
        return Permissions(
            pub_allow=(f"{p}.probe.*.*", dlq, *js_base, *_kv_read(inv)), sub_allow=tuple(own_inbox), inbox=inbox
        )
    if role == "inventory":
        return Permissions(pub_allow=(dlq, *js_base, *_kv_write(inv)), sub_allow=tuple(own_inbox), inbox=inbox)
    if role == "detector":
        return Permissions(
            pub_allow=(
                f"{p}.anomaly.*.*",
                dlq,
                *js_base,
                *_consume(lo.stream("PROBES")),
                *_consume(lo.stream("CLOUD")),
                *_consume(lo.stream("ANOMALIES")),  # what was firing is restored from ANOMALIES at start
                *_consume(lo.stream("AUDIT")),  # a node being remediated (cordoned, rebooting) is expected to look sick
                *_kv_read(inv),
            ),
            sub_allow=tuple(own_inbox),
            inbox=inbox,
        )
    if role == "diagnoser":
        return Permissions(
            pub_allow=(
                f"{p}.diagnosis.*.*",
                f"{p}.finding.fleet",
                dlq,
                *js_base,
                *_consume(lo.stream("ANOMALIES")),
                *_consume(lo.stream("CLOUD")),
                *_consume(lo.stream("AUDIT")),  # remediation history of a node is part of its diagnosis
                *_consume(lo.stream("DIAGNOSES")),  # its own last diagnoses and findings, at restart
                *_kv_read(inv),
                # its durable memory (crash history per host), written before acking (issue 14 item 2)
                *_kv_write(lo.bucket("diagnoser")),
            ),
            sub_allow=tuple(own_inbox),
            inbox=inbox,
        )
    if role == "remediator":
        return Permissions(
            pub_allow=(
                f"{p}.audit.*.*",
                f"{p}.cmd.*.*",
                dlq,
                *js_base,
                *_consume(lo.stream("DIAGNOSES")),
                *_consume(lo.stream("CLOUD")),
                *_consume(lo.stream("AUDIT")),  # idempotence: a recorded action id is never executed twice
                *_consume(lo.stream("PROBES")),  # verification after acting: fresh probes of the node
                *_kv_write(lo.bucket("leases")),
                *_kv_read(lo.bucket("control")),
                # its own bookkeeping in the control bucket (disruption ledger, storm markers); the
                # pause switch and approvals stay with people (admin)
                f"$KV.{lo.bucket('control')}.ledger.>",
                f"$KV.{lo.bucket('control')}.storm.>",
                *_kv_read(inv),
            ),
            sub_allow=tuple(own_inbox),
            inbox=inbox,
        )
    if role == "admin":
        # Provisioning and people: full JetStream API and read of everything, but the audit trail
        # stays the remediator's to write (an operator "fixing" history is exactly what AUDIT forbids).
        return Permissions(
            pub_allow=(">",),
            pub_deny=(f"{p}.audit.>",),
            sub_allow=(">",),
            inbox="_INBOX",
        )
    msg = f"unknown role {role!r}; known roles: {', '.join(ROLES)}"
    raise ValueError(msg)


# ---------------------------------------------------------------------------------------------
# Operator, accounts, scoped signing keys, users.

_UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}
_JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


@dataclass
class AuthBundle:
    """Everything `init` creates. Seeds are secrets; JWTs and public keys are not."""

    operator: NKey
    system_account: NKey
    account: NKey
    role_keys: dict[str, NKey]
    operator_jwt: str
    system_account_jwt: str
    account_jwt: str
    layout: Layout

    def server_config(self) -> str:
        """The part of nats-server.conf that turns on decentralized auth with a preloaded resolver.
        `resolver: MEMORY` keeps account JWTs in this file: fine for one account that changes only
        when roles change (re-render and `nats-server --signal reload`)."""
        return (
            "# generated by deploy/nats/natsauth.py: decentralized auth for nodeheal\n"
            f"operator: {self.operator_jwt}\n"
            f"system_account: {self.system_account.public_key}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f"  {self.system_account.public_key}: {self.system_account_jwt}\n"
            f"  {self.account.public_key}: {self.account_jwt}\n"
            "}\n"
        )

    def user_creds(self, role: str, *, cluster: str | None = None, node: str | None = None) -> str:
        return mint_user(role=role, role_key=self.role_keys[role], account=self.account, cluster=cluster, node=node)


def _escape(value: str) -> str:
    # the same escaping as nodeheal.schemas.subjects.escape_token (kept here so this file stays standalone)
    if _TOKEN_OK.fullmatch(value) and "_" not in value:
        return value
    return "".join(
        ch if re.fullmatch(r"[A-Za-z0-9-]", ch) else "".join(f"_{b:02X}" for b in ch.encode()) for ch in value
    )


def mint_user(
    *,
    role: str,
    role_key: NKey,
    account: NKey | str,
    cluster: str | None = None,
    node: str | None = None,
    expires_s: float | None = None,
) -> str:
    """A user of `role`, signed by the role's scoped signing key: permissions come from the key's
    template, the user JWT carries only tags (cluster/node for agents). Returns a .creds file."""
    user = NKey.create("user")
    tags: list[str] = []
    name = role
    if role == "agent":
        if not cluster or not node:
            msg = "an agent user needs --cluster and --node (its permissions are scoped to that node)"
            raise ValueError(msg)
        tags = [f"cluster:{_escape(cluster)}", f"node:{_escape(node)}"]
        name = f"agent-{_escape(cluster)}-{_escape(node)}"
    account_pub = account if isinstance(account, str) else account.public_key
    # A scoped user must carry no permissions or limits of its own (the server refuses it otherwise):
    # they all come from the signing key's template.
    nats: dict[str, Any] = {
        "issuer_account": account_pub,
        "type": "user",
        "version": 2,
    }
    if tags:
        nats["tags"] = tags
    jwt = encode_jwt(issuer=role_key, subject=user.public_key, name=name, nats=nats, expires_s=expires_s)
    return creds_file(jwt=jwt, seed=user.seed)


def build(layout: Layout | None = None) -> AuthBundle:
    lo = layout or Layout()
    operator = NKey.create("operator")
    system_account = NKey.create("account")
    account = NKey.create("account")
    role_keys = {role: NKey.create("account") for role in ROLES}
    signing_keys = [
        {
            "kind": "user_scope",
            "key": role_keys[role].public_key,
            "role": role,
            "template": role_permissions(role, lo).to_jwt(),
        }
        for role in ROLES
    ]
    account_jwt = encode_jwt(
        issuer=operator,
        subject=account.public_key,
        name="NODEHEAL",
        nats={
            "limits": {**_UNLIMITED, **_JETSTREAM},
            "signing_keys": signing_keys,
            "default_permissions": {"pub": {"deny": [">"]}, "sub": {"deny": [">"]}},
            "type": "account",
            "version": 2,
        },
    )
    system_account_jwt = encode_jwt(
        issuer=operator,
        subject=system_account.public_key,
        name="SYS",
        nats={"limits": _UNLIMITED, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2},
    )
    operator_jwt = encode_jwt(
        issuer=operator,
        subject=operator.public_key,
        name="nodeheal",
        nats={"system_account": system_account.public_key, "type": "operator", "version": 2},
    )
    return AuthBundle(
        operator=operator,
        system_account=system_account,
        account=account,
        role_keys=role_keys,
        operator_jwt=operator_jwt,
        system_account_jwt=system_account_jwt,
        account_jwt=account_jwt,
        layout=lo,
    )


def write_bundle(bundle: AuthBundle, out: Path) -> list[Path]:
    """auth.conf (server side, not secret), one .creds per fixed role, and the seeds (secret) of the
    operator, the account and the agent role key (needed later to mint per-node agent users)."""
    out.mkdir(parents=True, exist_ok=True)
    secret = out / "keys"
    secret.mkdir(exist_ok=True)
    os.chmod(secret, 0o700)
    written: list[Path] = []

    def put(path: Path, text: str, mode: int) -> None:
        path.write_text(text)
        os.chmod(path, mode)
        written.append(path)

    put(out / "auth.conf", bundle.server_config(), 0o644)
    for role in ROLES:
        if role != "agent":
            put(out / f"{role}.creds", bundle.user_creds(role), 0o600)
    put(secret / "operator.nk", bundle.operator.seed + "\n", 0o600)
    put(secret / "account.nk", bundle.account.seed + "\n", 0o600)
    put(secret / "account.pub", bundle.account.public_key + "\n", 0o644)
    for role, key in bundle.role_keys.items():
        put(secret / f"role-{role}.nk", key.seed + "\n", 0o600)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="natsauth", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("init", "show"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--prefix", default="nodeheal")
        cmd.add_argument("--stream-prefix", default="")
        cmd.add_argument("--bucket-prefix", default="nodeheal")
        if name == "init":
            cmd.add_argument("--out", required=True, type=Path)
    mint = sub.add_parser("mint-agent")
    mint.add_argument("--keys", required=True, type=Path, help="the keys/ directory written by init")
    mint.add_argument("--cluster", required=True)
    mint.add_argument("--node", required=True)
    mint.add_argument("--expires-s", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command == "mint-agent":
        role_key = NKey.from_seed((args.keys / "role-agent.nk").read_text())
        account = (args.keys / "account.pub").read_text().strip()
        sys.stdout.write(
            mint_user(
                role="agent",
                role_key=role_key,
                account=account,
                cluster=args.cluster,
                node=args.node,
                expires_s=args.expires_s,
            )
        )
        return 0
    layout = Layout(prefix=args.prefix, stream_prefix=args.stream_prefix, bucket_prefix=args.bucket_prefix)
    if args.command == "show":
        matrix = {
            role: role_permissions(role, layout).to_jwt() | {"inbox_prefix": inbox_prefix(role)} for role in ROLES
        }
        json.dump(matrix, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if (args.out / "auth.conf").exists():
        sys.stderr.write(f"{args.out}/auth.conf exists: refusing to overwrite keys; choose an empty --out\n")
        return 2
    for path in write_bundle(build(layout), args.out):
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
