"""New kernel log lines since the last probe, from `/dev/kmsg` or from the journal.

`/dev/kmsg` records look like `6,1234,5678901,-;message` followed by continuation lines that start
with a space (key=value dictionary). The reader keeps the device open, reads without blocking until
the kernel says "nothing more" (EAGAIN) and remembers the last sequence number, so each line is
reported once and only once; an EPIPE means the ring buffer overwrote records we had not read yet
and is counted as dropped. The same code reads a regular file with the same format (tests use one
in a fake root; records are then split on newlines and a read of b'' means the end).

The last sequence number is kept in a small state file together with the boot id: after an agent
restart within the same boot nothing is reported twice; after a reboot the whole buffer of the new
boot is read (a machine-check found during boot is exactly what the diagnoser needs); on the very
first start (no state) the reader starts at the end to avoid replaying old history.

`JournalKernelLog` runs `journalctl -k -o cat --show-cursor --after-cursor ...` instead, for hosts
where /dev/kmsg is not readable. Neither class talks to NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("nodeheal.agent.kmsg")

_READ_SIZE = 16_384  # /dev/kmsg returns one record per read and EINVAL when the buffer is too small


@dataclass(frozen=True, slots=True)
class KernelLogBatch:
    lines: tuple[str, ...]
    dropped: int


class KmsgDevice(Protocol):
    """Where `/dev/kmsg` records come from: every record available now, oldest first, as text in the
    device's format. `KmsgReader` reads the real device (or a file) itself when it is given none; the
    fleet simulator gives each node's reader its own ring of records."""

    def read_records(self) -> list[str]: ...


class KernelLogSource(Protocol):
    async def read_new(self, *, max_lines: int) -> KernelLogBatch: ...

    def close(self) -> None: ...


def parse_record(record: str) -> tuple[int, str] | None:
    """`6,1234,5678901,-;message` → (1234, 'message'); continuation lines and junk → None."""
    if not record or record.startswith(" "):
        return None
    head, sep, message = record.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    if len(fields) < 3:
        return None
    try:
        seq = int(fields[1])
    except ValueError:
        return None
    return seq, message.rstrip("\n")


class KmsgReader:
    """Reads `/dev/kmsg` (or a file in its format) without blocking, tracking the sequence number."""

    def __init__(
        self, *, path: Path, state_file: Path | None, boot_id: str | None, device: KmsgDevice | None = None
    ) -> None:
        self.path = path
        self.device = device
        self.state_file = state_file
        self.boot_id = boot_id
        self._fd: int | None = None
        self._partial = b""
        self.last_seq: int | None = None
        self._start_at_end = False
        self._load_state()

    def _load_state(self) -> None:
        if self.state_file is None:
            return
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            self._start_at_end = True  # first start: do not replay old history
            return
        if state.get("boot_id") == self.boot_id and isinstance(state.get("seq"), int):
            self.last_seq = state["seq"]
        # a different boot: read the new boot's buffer from its beginning

    def _save_state(self) -> None:
        if self.state_file is None or self.last_seq is None:
            return
        try:
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"boot_id": self.boot_id, "seq": self.last_seq}))
            tmp.replace(self.state_file)
        except OSError as exc:
            log.warning("cannot save kmsg position", extra={"path": str(self.state_file), "error": str(exc)})

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            if self._start_at_end:
                with contextlib.suppress(OSError):
                    os.lseek(self._fd, 0, os.SEEK_END)
                self._start_at_end = False
        return self._fd

    def _read_records(self) -> list[str]:
        """Every record available now."""
        if self.device is not None:
            return self.device.read_records()
        fd = self._open()
        records: list[str] = []
        while True:
            try:
                chunk = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    # the kernel overwrote records we had not read; the sequence gap counts them
                    continue
                if exc.errno == errno.EAGAIN:
                    break
                raise
            if not chunk:
                break  # end of a regular file
            data = self._partial + chunk
            *complete, self._partial = data.split(b"\n")
            records.extend(part.decode("utf-8", errors="replace") for part in complete)
        return records

    async def read_new(self, *, max_lines: int) -> KernelLogBatch:
        if self.device is not None:  # in memory: no thread needed
            return self.select(self.device.read_records(), max_lines=max_lines)
        records = await asyncio.to_thread(self._read_records)
        return self.select(records, max_lines=max_lines)

    def select(self, records: Sequence[str], *, max_lines: int) -> KernelLogBatch:
        """Keep records newer than the last sequence; keep the first `max_lines`, count the rest."""
        lines: list[str] = []
        dropped = 0
        for record in records:
            parsed = parse_record(record)
            if parsed is None:
                continue
            seq, message = parsed
            if self.last_seq is not None and seq <= self.last_seq:
                continue
            if self.last_seq is not None and seq > self.last_seq + 1:
                dropped += seq - self.last_seq - 1  # records we never saw (overwritten before we read)
            self.last_seq = seq
            if len(lines) < max_lines:
                lines.append(message)
            else:
                dropped += 1
        self._save_state()
        return KernelLogBatch(lines=tuple(lines), dropped=dropped)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class JournalKernelLog:
    """Kernel messages from the journal: `journalctl -k -o cat --show-cursor --after-cursor=<c>`."""

    def __init__(self, *, command: Sequence[str], state_file: Path | None, timeout_s: float = 10.0) -> None:
        self.command = list(command)
        self.state_file = state_file
        self.timeout_s = timeout_s
        self.cursor: str | None = None
        if state_file is not None:
            with contextlib.suppress(OSError):
                self.cursor = state_file.read_text().strip() or None

    async def read_new(self, *, max_lines: int) -> KernelLogBatch:
        args = [*self.command, "-k", "-o", "cat", "--show-cursor", "--no-pager"]
        first = self.cursor is None
        # first start: take only the newest entry, for its cursor (history is not replayed)
        args += ["--lines=1"] if first else [f"--after-cursor={self.cursor}"]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            msg = f"{args[0]} did not answer within {self.timeout_s}s"
            raise RuntimeError(msg) from None
        if proc.returncode != 0:
            msg = f"{' '.join(args)} exited {proc.returncode}: {err.decode(errors='replace').strip()[:300]}"
            raise RuntimeError(msg)
        lines: list[str] = []
        dropped = 0
        for line in out.decode("utf-8", errors="replace").splitlines():
            if line.startswith("-- cursor: "):
                self.cursor = line.removeprefix("-- cursor: ").strip()
                continue
            if first:
                continue
            if len(lines) < max_lines:
                lines.append(line)
            else:
                dropped += 1
        if self.state_file is not None and self.cursor:
            with contextlib.suppress(OSError):
                self.state_file.write_text(self.cursor)
        return KernelLogBatch(lines=tuple(lines), dropped=dropped)

    def close(self) -> None:
        return None
