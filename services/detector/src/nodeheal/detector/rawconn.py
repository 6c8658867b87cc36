"""A minimal NATS protocol connection for the probe hot path: pull JetStream batches and acknowledge
them, nothing else.

Why: profiling the detector's drain showed nats-py's reader (its protocol parser, `_process_msg`,
and above all the parsing of every message's headers — each stored probe carries `Nats-Msg-Id`)
taking more than half of the CPU of the probe path. This connection parses `MSG`/`HMSG` frames in
one synchronous pass per read, never parses the headers of data messages (only status messages,
`NATS/1.0 408 ...`, are looked at), and hands the consumer whole chunks. Publishing anomalies, the
DLQ, CLOUD/AUDIT and everything else keeps using nats-py.

Scope, on purpose: plain TCP, optional user/password or token, reconnect (to the next URL, with a
back-off; requests in flight are simply re-issued), PING/PONG. TLS and credential files are not
implemented here: with those settings the detector uses the nats-py puller (`puller.BatchPuller`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from urllib.parse import urlparse

log = logging.getLogger("nodeheal.detector.rawconn")

_CRLF = b"\r\n"
_PENDING = b"Nats-Pending-Messages:"


class RawMsg:
    """One delivered message: subject, reply (the ack subject), payload, raw header block."""

    __slots__ = ("data", "hdr", "reply", "subject")

    def __init__(self, subject: str, reply: str, data: bytes, hdr: bytes | None) -> None:
        self.subject = subject
        self.reply = reply
        self.data = data
        self.hdr = hdr

    @property
    def headers(self) -> dict[str, str] | None:
        """Parsed only when someone asks (the DLQ does; the happy path never does)."""
        if not self.hdr:
            return None
        out: dict[str, str] = {}
        for line in self.hdr.split(_CRLF)[1:]:
            if b":" in line:
                key, _, value = line.partition(b":")
                out[key.decode(errors="replace").strip()] = value.decode(errors="replace").strip()
        return out


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: RawPuller) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self._rest = b""
        self.info = asyncio.get_running_loop().create_future()
        self.pong = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        n = len(data)
        pos = 0
        owner = self.owner
        ready = owner._ready
        got = 0
        while pos < n:
            eol = data.find(_CRLF, pos)
            if eol < 0:
                break
            op = data[pos : pos + 4]
            if op == b"HMSG":
                # HMSG <subject> <sid> [reply] <hdr bytes> <total bytes>
                parts = data[pos + 5 : eol].split(b" ")
                total = int(parts[-1])
                end = eol + 2 + total
                if end + 2 > n:
                    break
                hlen = int(parts[-2])
                hdr = data[eol + 2 : eol + 2 + hlen]
                reply = parts[2].decode() if len(parts) == 5 else ""
                if hdr[9:10] in (b"1", b"4", b"5") and hdr.startswith(b"NATS/1.0 "):
                    owner._status(hdr)
                else:
                    ready.append(RawMsg(parts[0].decode(), reply, data[eol + 2 + hlen : end], hdr))
                    got += 1
                pos = end + 2
            elif op == b"MSG ":
                # MSG <subject> <sid> [reply] <bytes>
                parts = data[pos + 4 : eol].split(b" ")
                size = int(parts[-1])
                end = eol + 2 + size
                if end + 2 > n:
                    break
                reply = parts[2].decode() if len(parts) == 4 else ""
                ready.append(RawMsg(parts[0].decode(), reply, data[eol + 2 : end], None))
                got += 1
                pos = end + 2
            elif op == b"PING":
                if self.transport is not None:
                    self.transport.write(b"PONG\r\n")
                pos = eol + 2
            elif op == b"PONG":
                self.pong.set()
                pos = eol + 2
            elif op == b"INFO":
                if not self.info.done():
                    self.info.set_result(json.loads(data[pos + 5 : eol]))
                pos = eol + 2
            elif op == b"-ERR":
                log.warning("nats server error: %s", data[pos:eol].decode(errors="replace"))
                pos = eol + 2
            else:  # +OK and anything unknown
                pos = eol + 2
        self._rest = data[pos:] if pos < n else b""
        if got:
            owner._wake.set()


class RawPuller:
    """Same interface as `puller.BatchPuller`, on its own minimal connection."""

    def __init__(
        self,
        *,
        servers: list[str],
        stream: str,
        consumer: str,
        batch: int = 1000,
        expires_s: float = 5.0,
        user: str | None = None,
        password: str | None = None,
        name: str = "nodeheal-detector-probes",
        api_prefix: str = "$JS.API",
        inbox_prefix: str = "_INBOX",
    ) -> None:
        self.servers = servers
        self.stream = stream
        self.consumer = consumer
        self.batch = batch
        self.expires_s = expires_s
        self.user = user
        self.password = password
        self.name = name
        self._next = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}".encode()
        # Under per-service permissions the user may subscribe only below its own inbox prefix.
        self._inbox = f"{inbox_prefix}.detector-probes.{id(self):x}.{int(time.time() * 1000)}".encode()
        self._proto: _Protocol | None = None
        self._ready: list[RawMsg] = []
        self._wake = asyncio.Event()
        self._outstanding = 0
        self._last_activity = 0.0
        self._server_index = 0
        self._closing = False
        self.delivered = 0
        self.reconnects = 0

    # -- connection

    async def start(self) -> None:
        await self._connect()

    async def _connect(self) -> None:
        delay = 0.1
        while not self._closing:
            url = self.servers[self._server_index % len(self.servers)]
            self._server_index += 1
            parsed = urlparse(url if "://" in url else f"nats://{url}")
            try:
                loop = asyncio.get_running_loop()
                _, proto = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Protocol(self), parsed.hostname or "127.0.0.1", parsed.port or 4222
                    ),
                    timeout=5.0,
                )
                await asyncio.wait_for(proto.info, timeout=5.0)
                connect: dict[str, object] = {
                    "verbose": False,
                    "pedantic": False,
                    "headers": True,
                    "no_responders": True,
                    "protocol": 1,
                    "lang": "python-nodeheal-raw",
                    "version": "0.1",
                    "name": self.name,
                }
                user = self.user or parsed.username
                password = self.password or parsed.password
                if user and password:
                    connect["user"], connect["pass"] = user, password
                elif user:
                    connect["auth_token"] = user
                assert proto.transport is not None
                proto.transport.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
                await asyncio.wait_for(proto.pong.wait(), timeout=5.0)
                proto.transport.write(b"SUB " + self._inbox + b" 1\r\n")
                self._proto = proto
                self._outstanding = 0
                return
            except (OSError, TimeoutError) as exc:
                log.warning("probe connection to %s failed (%s); retrying in %.1fs", url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _lost(self, exc: Exception | None) -> None:
        self._proto = None
        self._outstanding = 0
        self._wake.set()
        if not self._closing:
            self.reconnects += 1
            log.warning("probe connection lost (%s); reconnecting", exc)

    async def stop(self) -> None:
        self._closing = True
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    # -- pulling

    def _status(self, hdr: bytes) -> None:
        code = hdr[9:12]
        if code == b"100":
            return  # idle heartbeat
        i = hdr.find(_PENDING)
        if i >= 0:
            j = hdr.find(_CRLF, i)
            left = int(hdr[i + len(_PENDING) : j if j >= 0 else None].strip() or 0)
            self._outstanding = max(0, self._outstanding - left)
        else:
            self._outstanding = 0

    def _request(self) -> None:
        assert self._proto is not None
        assert self._proto.transport is not None
        body = json.dumps({"batch": self.batch, "expires": int(self.expires_s * 1e9)}).encode()
        self._proto.transport.write(
            b"PUB " + self._next + b" " + self._inbox + b" " + str(len(body)).encode() + _CRLF + body + _CRLF
        )
        self._outstanding += self.batch
        self._last_activity = time.monotonic()

    async def next_chunk(self, *, wait_s: float) -> list[RawMsg]:
        if self._proto is None:
            await self._connect()
            if self._proto is None:
                return []
        while self._outstanding < 2 * self.batch:
            self._request()
        if not self._ready:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            if not self._ready:
                if time.monotonic() - self._last_activity > self.expires_s + 1.0:
                    self._outstanding = 0
                return []
        out, self._ready = self._ready, []
        self._outstanding = max(0, self._outstanding - len(out))
        self.delivered += len(out)
        self._last_activity = time.monotonic()
        return out

    async def ack_all_through(self, msg: RawMsg) -> None:
        proto = self._proto
        if msg.reply and proto is not None and proto.transport is not None:
            proto.transport.write(b"PUB " + msg.reply.encode() + b" 4\r\n+ACK\r\n")

    async def ack_each(self, msgs: Sequence[RawMsg]) -> None:
        """AckPolicy.EXPLICIT: one `+ACK` per message, written to the socket in one call."""
        proto = self._proto
        if proto is None or proto.transport is None:
            return  # lost connection: the server redelivers after ack_wait, the anomaly ids dedupe
        frames = [b"PUB " + m.reply.encode() + b" 4\r\n+ACK\r\n" for m in msgs if m.reply]
        if frames:
            proto.transport.write(b"".join(frames))
