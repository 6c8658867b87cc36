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
    python deploy/nats/natsauth.py mint-ingest-node --keys DIR --cluster C --node N > ingest-node.creds
    python deploy/nats/natsauth.py show [--prefix nodeheal]        # the permission matrix as JSON
    python deploy/nats/natsauth.py table                          # the same as a Markdown table

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
from dataclasses import dataclass
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

ROLES = (
    "ingest",
    "ingest-node",
    "agent",
    "prober",
    "inventory",
    "detector",
    "diagnoser",
    "remediator",
    "reader",
    "admin",
)
"""One NATS user role per deployable part. `admin` is the provisioning Job and people's CLI; `reader` is
people and tools that only read (`nodeheal audit tail`, `replay`, `fleet`, an audit subscriber);
`ingest-node` is the node-local ingest (deploy/components/ingest-node), which speaks for its own node only."""

NODE_ROLES = ("agent", "ingest-node")
"""Roles whose users are minted per node (`mint-agent`, `mint-ingest-node`): their permissions name the user's
own cluster and node (JWT tags), so one node's credential cannot speak for another node."""

READ_STREAMS = ("PROBES", "CLOUD", "ANOMALIES", "DIAGNOSES", "AUDIT", "CRASHES", "DLQ")
"""Every stream the `reader` role may read (all of them): history is for whoever must explain an incident."""

READ_BUCKETS = ("inventory", "crash-buckets", "control")
"""The buckets the `reader` role may read (never write)."""

_TOKEN_OK = re.compile(r"^[A-Za-z0-9_-]+$")

DLQ_SERVICE = {
    "ingest": "cloud-events-ingest",  # IngestSettings.service_name
    "ingest-node": "cloud-events-ingest-node",  # the node-local ingest's NODEHEAL_INGEST_SERVICE_NAME
    "agent": "node-agent",  # AgentSettings.dlq_service
    "prober": "prober",
    "inventory": "inventory",
    "detector": "detector",
    "diagnoser": "diagnoser",
    "remediator": "remediator",
}
"""The DLQ subject token each role writes (`<prefix>.dlq.<token>`, the `service` of `dead_letter`): one
subject per role, so the DLQ's per-subject cap bounds each role's share and no role can write letters
in another *role's* name. Not per node: every node agent writes the one subject `<prefix>.dlq.node-agent`,
so one node can fill its per-subject cap (the oldest go first) and push out the other agents' letters, and
the letter's own fields (`subject`, `reason`) are whatever the writer says, another node's included
(docs/security.md, known gaps)."""


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
    detector_replicas: tuple[int, ...] = (3,)
    """Replica counts of a partitioned detector (`DetectorSettings.replicas`), whose durables are named
    `detector-<r>-of-<n>`; empty: one unpartitioned detector only. The default protects the production
    overlay's three (a forgotten `--detector-replicas` must not leave them open to other roles); the names
    of an unpartitioned detector (`detector`) are protected whatever this says."""

    def stream(self, name: str) -> str:
        return f"{self.stream_prefix}{name}"

    def bucket(self, name: str) -> str:
        return f"{self.bucket_prefix}-{name}"


def _consume(stream: str) -> list[str]:
    """What reading `stream` needs: look it up, create/update/inspect *named* consumers on that stream
    only (durable pull consumers, and ephemerals named by the client: nats-py's `pull_subscribe` with
    no durable, the detector's replay), fetch, acknowledge (ack/nak/term/in-progress all publish to
    $JS.ACK), flow control, and direct gets of the last message per subject (state seeding).

    Never the legacy server-named create `$JS.API.CONSUMER.CREATE.<stream>`: the server takes the
    consumer's name from the request *body* there, so it can rewrite any durable of the stream (tested).
    Other roles' durables on the stream are then refused by `_guard_durables` (deny beats allow)."""
    return [
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.*",
        f"$JS.API.CONSUMER.CREATE.{stream}.*.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]


def _ordered(stream: str) -> list[str]:
    """nats-py's ordered push consumers (`js.subscribe(ordered_consumer=True)`) create through the legacy
    server-named subject. Only for streams where that role is the only owner of durables, see
    `LEGACY_CREATE`."""
    return [f"$JS.API.CONSUMER.CREATE.{stream}"]


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
    `inbox_prefix`), so one service cannot read another's request replies or PubAcks. For the agent this
    is the base: the agent appends its escaped cluster and node tokens itself
    (`AgentSettings.inbox_per_node`, see `agent_inbox_prefix`; the node-local ingest likewise,
    `IngestSettings.inbox_per_node`), and the server lets each subscribe only below its own node's prefix."""
    return f"_INBOX.{role}"


def agent_inbox_prefix(cluster: str, node: str, role: str = "agent") -> str:
    """The inbox prefix of one node's agent (or node-local ingest, `role`): `_INBOX.<role>.<cluster>.<node>`
    (escaped tokens)."""
    return f"{inbox_prefix(role)}.{_escape(cluster)}.{_escape(node)}"


# ---------------------------------------------------------------------------------------------
# Who owns which durable consumer. One row per durable a service keeps (its name comes from the
# service's settings: `DetectorSettings.durable`, `DiagnoserSettings.durable`, ...). No other role may
# create, update, delete, fetch from or acknowledge on it (`_guard_durables`). Add a row when a service
# gets a new durable; tests/unit/deploy/test_natsauth_matrix.py checks the services' defaults are here.

DURABLES: tuple[tuple[str, str, str], ...] = (
    # (role, stream base name, durable name)
    ("detector", "PROBES", "detector"),
    ("detector", "CLOUD", "detector"),
    ("detector", "AUDIT", "detector"),
    ("diagnoser", "ANOMALIES", "diagnoser"),
    ("diagnoser", "CLOUD", "diagnoser"),
    ("diagnoser", "AUDIT", "diagnoser"),
    ("diagnoser", "CRASHES", "diagnoser"),
    ("remediator", "DIAGNOSES", "remediator"),
)

LEGACY_CREATE: tuple[tuple[str, str], ...] = ()
"""(role, stream base name) pairs allowed the legacy server-named consumer create (nats-py's ordered
consumers use it). None: it takes the consumer name from the request body, so it could rewrite any
durable of the stream; services read with named ephemerals instead (`runtime.jetstream.follow_stream`,
`read_stream`, nats-py `pull_subscribe(durable=None)`). KV watches keep it on the KV_ streams only,
where no service keeps a durable."""


def durables(layout: Layout | None = None) -> list[tuple[str, str, str]]:
    """`DURABLES` with the layout's stream names; partitioned detector replicas own
    `detector-<r>-of-<n>` (`DetectorSettings.probe_durable`) for every replica count in
    `layout.detector_replicas`."""
    lo = layout or Layout()
    out: list[tuple[str, str, str]] = []
    for role, stream, name in DURABLES:
        out.append((role, lo.stream(stream), name))
        if role == "detector":
            for n in lo.detector_replicas:
                out.extend((role, lo.stream(stream), f"{name}-{r}-of-{n}") for r in range(n))
    return out


def _consumed_streams(pub_allow: tuple[str, ...]) -> list[str]:
    head, tail = "$JS.API.CONSUMER.MSG.NEXT.", ".*"
    return [a[len(head) : -len(tail)] for a in pub_allow if a.startswith(head) and a.endswith(tail)]


def _guard_durables(role: str, perms: Permissions, layout: Layout) -> Permissions:
    """Deny `role` every consumer operation on the durables other roles own on the streams it reads."""
    consumed = set(_consumed_streams(perms.pub_allow))
    deny: list[str] = []
    for owner, stream, name in durables(layout):
        if owner == role or stream not in consumed:
            continue
        deny += [
            f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{name}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}",
            f"$JS.API.CONSUMER.DELETE.{stream}.{name}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
            f"$JS.ACK.{stream}.{name}.>",
        ]
    legacy = [s for r, s in LEGACY_CREATE if r == role]
    extra = tuple(a for s in legacy for a in _ordered(layout.stream(s)))
    return Permissions(
        pub_allow=perms.pub_allow + extra,
        sub_allow=perms.sub_allow,
        pub_deny=perms.pub_deny + tuple(deny),
        sub_deny=perms.sub_deny,
        allow_responses=perms.allow_responses,
        inbox=perms.inbox,
    )


def role_permissions(role: str, layout: Layout | None = None) -> Permissions:
    """The allow and deny lists of one role. Everything not allowed is refused by the server."""
    lo = layout or Layout()
    return _guard_durables(role, _base_permissions(role, lo), lo)


def _base_permissions(role: str, lo: Layout) -> Permissions:
    """What each role may publish and subscribe to, before `_guard_durables`."""
    p = lo.prefix
    js_base = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]
    dlq = f"{p}.dlq.{DLQ_SERVICE.get(role, role)}"  # write-only, and only under its own name
    inv = lo.bucket("inventory")
    inbox = inbox_prefix(role)
    own_inbox = [f"{inbox}.>"]
    if role == "ingest":
        return Permissions(
            pub_allow=(f"{p}.cloud.*.*", dlq, *js_base, *_kv_read(inv), *_consume(lo.stream("CLOUD"))),
            sub_allow=tuple(own_inbox),
            inbox=inbox,
        )
    if role == "ingest-node":
        # the node-local ingest: publishes its own node's host events only (what the node's metadata server says
        # about this machine), seeds its ledger from its own node's CLOUD subject only (a consumer whose one filter
        # is that subject: the filter is part of the create request's subject), no inventory, no webhooks
        node = "{{tag(cluster)}}.{{tag(node)}}"
        cloud = lo.stream("CLOUD")
        return Permissions(
            pub_allow=(
                f"{p}.cloud.{node}",
                dlq,
                *js_base,
                f"$JS.API.STREAM.INFO.{cloud}",
                f"$JS.API.CONSUMER.CREATE.{cloud}.*.{p}.cloud.{node}",
                f"$JS.API.CONSUMER.INFO.{cloud}.*",
                f"$JS.API.CONSUMER.MSG.NEXT.{cloud}.*",
                f"$JS.API.CONSUMER.DELETE.{cloud}.*",
            ),
            sub_allow=(f"{inbox}.{node}.>",),
            inbox=inbox,
        )
    if role == "agent":
        # a node publishes probes about itself only, reads commands for itself only, and replies
        # only to the requester of a command it received (allow_responses); its inbox is its own
        node = "{{tag(cluster)}}.{{tag(node)}}"
        return Permissions(
            pub_allow=(f"{p}.probe.{node}", f"{p}.crash.{node}", dlq),
            sub_allow=(f"{p}.cmd.{node}", f"{inbox}.{node}.>"),
            allow_responses=True,
            inbox=inbox,
        )
    if role == "prober":
        return Permissions(
            # its own subject kind: the detector accepts only `source: prober` there, and the prober
            # cannot publish where agents speak for themselves. Its result batches (`ProberResults`, one per
            # partition of PROBES) go there too, as `prober.<cluster>._r<k>`: no agent may publish one (an
            # agent's subjects carry its own escaped node name, never a `_r<k>` routing token)
            pub_allow=(f"{p}.prober.*.*", dlq, *js_base, *_kv_read(inv)),
            sub_allow=tuple(own_inbox),
            inbox=inbox,
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
                *_consume(lo.stream("CRASHES")),  # the agents' crash reports
                *_kv_write(lo.bucket("crash-buckets")),  # one fleet record per crash bucket
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
    if role == "reader":
        # People and tools that only read: `nodeheal audit tail` / `replay` / `fleet`, an audit subscriber
        # (its own named durables, `audit tail --durable`). It publishes nothing but JetStream API
        # requests and acks on its own consumers: no DLQ subject, no KV write, no service's durable
        # (`_guard_durables`), and replies come on its own inbox subtree.
        return Permissions(
            pub_allow=(
                *js_base,
                *(a for stream in READ_STREAMS for a in _consume(lo.stream(stream))),
                *(a for bucket in READ_BUCKETS for a in _kv_read(lo.bucket(bucket))),
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


def _summarise(subjects: tuple[str, ...], layout: Layout) -> tuple[list[str], list[str], list[str]]:
    """(plain subjects, consumed streams, buckets) of an allow list, for people."""
    plain: list[str] = []
    streams: list[str] = []
    buckets: list[str] = []
    for subject in subjects:
        if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
            stream = subject.removeprefix("$JS.API.CONSUMER.MSG.NEXT.").removesuffix(".*")
            if not stream.startswith("KV_"):
                streams.append(stream)
        elif subject.startswith("$JS.API.STREAM.INFO.KV_"):
            buckets.append(subject.removeprefix("$JS.API.STREAM.INFO.KV_"))
        elif subject.startswith("$KV.") or not subject.startswith(("$JS.", "_INBOX")):
            plain.append(subject)
    return plain, streams, buckets


def matrix_markdown(layout: Layout | None = None) -> str:
    """The permission matrix as a Markdown table (docs/security.md embeds it; a test checks it is current)."""
    lo = layout or Layout()
    owned: dict[str, list[str]] = {}
    for role, stream, name in durables(lo):
        owned.setdefault(role, []).append(f"{stream}/{name}")
    rows = [
        "| role | publishes | reads (consumers on) | key-value | owns durables | subscribes | inbox |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(items: list[str]) -> str:
        return "<br>".join(f"`{i}`" for i in items) or "—"

    for role in ROLES:
        perms = role_permissions(role, lo)
        if role == "admin":
            rows.append(
                f"| admin | everything but {cell(list(perms.pub_deny))} | every stream | every bucket | — | everything"
                " | `_INBOX` |"
            )
            continue
        plain, streams, buckets = _summarise(perms.pub_allow, lo)
        writes = [b.removeprefix("$KV.") for b in plain if b.startswith("$KV.")]
        kv = [f"{b} (read)" for b in buckets if not any(w.startswith(f"{b}.") for w in writes)]
        kv += [
            f"{b} (write {', '.join(w.removeprefix(b + '.') for w in writes if w.startswith(b + '.'))})"
            for b in buckets
            if any(w.startswith(f"{b}.") for w in writes)
        ]
        # a stream read only through consumers whose one filter the permission names: say which
        for i, stream in enumerate(streams):
            head = f"$JS.API.CONSUMER.CREATE.{stream}."
            creates = [x.removeprefix(head) for x in perms.pub_allow if x.startswith(head)]
            if creates and all(c.startswith("*.") and c != "*.>" for c in creates):
                streams[i] = f"{stream}` filtered to `{'`, `'.join(c.removeprefix('*.') for c in creates)}"
        subs = [x for x in perms.sub_allow if not x.startswith("_INBOX")]
        inbox = next((x for x in perms.sub_allow if x.startswith("_INBOX")), "")
        rows.append(
            f"| {role} | {cell([x for x in plain if not x.startswith('$KV.')])} | {cell(streams)} | {cell(kv)}"
            f" | {cell(owned.get(role, []))} | {cell(subs)}{' + replies to requests' if perms.allow_responses else ''}"
            f" | `{inbox}` |"
        )
    return "\n".join(rows) + "\n"


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
_JETSTREAM = {
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
    # every stream and bucket must carry its own byte cap (StreamSpec / BucketSpec.max_bytes): the
    # server reserves the caps against its store (`max_file_store`), so one stream can never fill the
    # store that AUDIT and PROBES write to
    "max_bytes_required": True,
}


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
    if role in NODE_ROLES:
        if not cluster or not node:
            msg = f"an {role} user needs --cluster and --node (its permissions are scoped to that node)"
            raise ValueError(msg)
        tags = [f"cluster:{_escape(cluster)}", f"node:{_escape(node)}"]
        name = f"{role}-{_escape(cluster)}-{_escape(node)}"
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
        if role not in NODE_ROLES:
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
    for name in ("init", "show", "table"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--prefix", default="nodeheal")
        cmd.add_argument("--stream-prefix", default="")
        cmd.add_argument("--bucket-prefix", default="nodeheal")
        cmd.add_argument(
            "--detector-replicas",
            type=int,
            action="append",
            default=None,
            help="replica count of a partitioned detector (its durables detector-<r>-of-<n> are protected);"
            " repeat for several; default 3, the production overlay's",
        )
        if name == "init":
            cmd.add_argument("--out", required=True, type=Path)
    for role in NODE_ROLES:
        mint = sub.add_parser(f"mint-{role}")
        mint.add_argument("--keys", required=True, type=Path, help="the keys/ directory written by init")
        mint.add_argument("--cluster", required=True)
        mint.add_argument("--node", required=True)
        mint.add_argument("--expires-s", type=float, default=None)
    args = parser.parse_args(argv)
    if args.command.startswith("mint-"):
        role = args.command.removeprefix("mint-")
        role_key = NKey.from_seed((args.keys / f"role-{role}.nk").read_text())
        account = (args.keys / "account.pub").read_text().strip()
        sys.stdout.write(
            mint_user(
                role=role,
                role_key=role_key,
                account=account,
                cluster=args.cluster,
                node=args.node,
                expires_s=args.expires_s,
            )
        )
        return 0
    layout = Layout(
        prefix=args.prefix,
        stream_prefix=args.stream_prefix,
        bucket_prefix=args.bucket_prefix,
        detector_replicas=tuple(args.detector_replicas) if args.detector_replicas else Layout().detector_replicas,
    )
    if args.command == "table":
        sys.stdout.write(matrix_markdown(layout))
        return 0
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
