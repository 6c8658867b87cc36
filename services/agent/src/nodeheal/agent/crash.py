"""Crash capture: what the previous boot left behind, read once on the first probe of a new boot.

A node that crashed comes back with a new boot id and the story of its death in places the running
kernel's log does not hold:

- **pstore** (`/sys/fs/pstore`): `dmesg-ramoops-N` (ramoops, reserved RAM that survives a warm
  reset), `dmesg-efi-…` (UEFI variables), `dmesg-erst-…` (ACPI ERST) — each file starts with a
  `Oops#1 Part1` / `Panic#2 Part1` header, then the kernel log with `<N>` level prefixes. Large dumps
  are split into parts, Part1 being the *newest* piece. `systemd-pstore.service` moves these files
  to `/var/lib/systemd/pstore` early at boot, so that directory is read too.
- **kdump** (`/var/crash/<dir>/`): `vmcore-dmesg.txt` of kdumpctl (Alibaba Cloud Linux, CentOS,
  RHEL, Anolis; `<dir>` is `127.0.0.1-YYYY-MM-DD-HH:MM:SS`, `vmcore-dmesg-incomplete.txt` when the
  dump was cut short) and `dmesg.<stamp>` of kdump-tools (Debian, Ubuntu; `<dir>` is `YYYYMMDDHHMM`).
- **the journal**: the kernel messages of the previous boot (`journalctl -k -b <previous boot>`),
  which is all there is when the machine was reset hard without pstore or kdump.

`CrashCollector.check()` runs on every probe and costs one comparison except on the first probe of
a boot. Then it decides whether the previous boot ended unexpectedly (a new boot id, and no orderly
stop of the agent recorded for the previous boot: `mark_orderly()` is called when the agent is
stopped, which systemd does on every orderly shutdown or reboot), gathers the evidence nobody has
reported yet, and returns one bounded `CrashReport`. After the report is acknowledged, `reported()`
remembers the boot and the evidence in a small state file, so a restart of the agent never sends
it again (and `Nats-Msg-Id`, derived from the boot id, deduplicates a retry the stream already has).

Files are read through plain paths under `root` (where the node's `/` is visible). Nothing here
changes the host (pstore files are left in place; they are remembered instead) or talks to NATS.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nodeheal.schemas.crash import (
    MAX_CRASH_EVIDENCE,
    MAX_CRASH_LINE_CHARS,
    MAX_CRASH_LINES,
    MAX_CRASH_REPORT_BYTES,
    CrashEvidence,
    CrashReport,
)
from nodeheal.schemas.ids import MessageId, deterministic_id

log = logging.getLogger("nodeheal.agent.crash")

DEFAULT_PSTORE_DIRS: tuple[str, ...] = ("/sys/fs/pstore", "/var/lib/systemd/pstore")
DEFAULT_KDUMP_DIRS: tuple[str, ...] = ("/var/crash",)
MAX_SEEN = 512  # evidence fingerprints remembered
_MAX_READ_BYTES = 4 * 1024 * 1024  # a vmcore-dmesg.txt is the whole ring buffer: read at most its tail

_PSTORE_HEADER = re.compile(r"^(?P<reason>[A-Za-z ]+?)#(?P<count>\d+) Part(?P<part>\d+)\s*$")
_PSTORE_NAME = re.compile(r"^(?P<kind>dmesg|console)-(?P<backend>[a-z0-9_]+)-(?P<id>[\w.-]+)$")
_KDUMP_FILES: tuple[tuple[str, str], ...] = (
    ("vmcore-dmesg.txt", "kdumpctl"),
    ("vmcore-dmesg-incomplete.txt", "kdumpctl"),
    ("dmesg.[0-9]*", "kdump-tools"),
)


def crash_msg_id(*, cluster: str, node: str, boot_id: str) -> MessageId:
    """`Nats-Msg-Id` of a crash report: one per (node, boot) however often it is sent."""
    return deterministic_id("agent-crash", cluster, node, boot_id, prefix="cr-")


@dataclass(frozen=True, slots=True)
class PstoreRecord:
    """One pstore file: its header and the log lines after it."""

    name: str
    backend: str
    reason: str | None
    count: int | None
    part: int | None
    lines: list[str]


def parse_pstore_text(name: str, text: str) -> PstoreRecord:
    """`Oops#1 Part1\\n<4>[ 5.77] ...` → the header's reason/count/part and the lines after it."""
    match = _PSTORE_NAME.match(name)
    backend = match.group("backend") if match else "unknown"
    lines = text.splitlines()
    header = _PSTORE_HEADER.match(lines[0]) if lines else None
    if header is None:
        return PstoreRecord(name=name, backend=backend, reason=None, count=None, part=None, lines=lines)
    return PstoreRecord(
        name=name,
        backend=backend,
        reason=header.group("reason").strip(),
        count=int(header.group("count")),
        part=int(header.group("part")),
        lines=lines[1:],
    )


def assemble_parts(records: Sequence[PstoreRecord]) -> list[list[PstoreRecord]]:
    """Group the parts of one dump (same backend, reason and count) oldest piece first (PartN … Part1).

    Records without a header stay alone. Groups come newest dump first (highest count)."""
    groups: dict[tuple[str, str, int], list[PstoreRecord]] = {}
    alone: list[list[PstoreRecord]] = []
    for record in records:
        if record.reason is None or record.count is None:
            alone.append([record])
            continue
        groups.setdefault((record.backend, record.reason, record.count), []).append(record)
    ordered = sorted(groups.items(), key=lambda kv: -kv[0][2])
    return [sorted(parts, key=lambda r: -(r.part or 0)) for _, parts in ordered] + alone


def bound_lines(lines: Sequence[str], *, max_lines: int = MAX_CRASH_LINES) -> tuple[tuple[str, ...], int]:
    """The last `max_lines` lines (the crash is at the end), each cut at `MAX_CRASH_LINE_CHARS`."""
    kept = [line.rstrip("\r\n")[:MAX_CRASH_LINE_CHARS] for line in lines[-max_lines:]] if max_lines > 0 else []
    return tuple(kept), max(0, len(lines) - len(kept))


def bound_report(report: CrashReport, *, max_bytes: int = MAX_CRASH_REPORT_BYTES) -> CrashReport:
    """Halve the lines of the longest evidence (keeping its tail) until the JSON fits `max_bytes`."""
    while len(report.to_json()) > max_bytes:
        evidence = list(report.evidence)
        if not evidence:
            break
        longest = max(range(len(evidence)), key=lambda i: len(evidence[i].lines))
        item = evidence[longest]
        if len(item.lines) <= 1:
            evidence.pop()
            dropped = report.evidence_dropped + 1
            report = report.model_copy(update={"evidence": tuple(evidence), "evidence_dropped": dropped})
            continue
        keep = len(item.lines) // 2
        evidence[longest] = item.model_copy(
            update={"lines": item.lines[-keep:], "lines_dropped": item.lines_dropped + len(item.lines) - keep}
        )
        report = report.model_copy(update={"evidence": tuple(evidence)})
    return report


@dataclass(slots=True)
class _Found:
    evidence: CrashEvidence
    fingerprints: list[str]  # one per file read


@dataclass
class CrashState:
    boot_id: str | None = None
    previous_boot_id: str | None = None
    unexpected: bool = False
    handled: bool = False
    orderly: bool = False
    seen: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None) -> CrashState | None:
        if path is None:
            return None
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict):
            return None
        seen = raw.get("seen")
        return cls(
            boot_id=raw.get("boot_id") if isinstance(raw.get("boot_id"), str) else None,
            previous_boot_id=raw.get("previous_boot_id") if isinstance(raw.get("previous_boot_id"), str) else None,
            unexpected=bool(raw.get("unexpected")),
            handled=bool(raw.get("handled")),
            orderly=bool(raw.get("orderly")),
            seen=[s for s in seen if isinstance(s, str)][-MAX_SEEN:] if isinstance(seen, list) else [],
        )

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        data = {
            "boot_id": self.boot_id,
            "previous_boot_id": self.previous_boot_id,
            "unexpected": self.unexpected,
            "handled": self.handled,
            "orderly": self.orderly,
            "seen": self.seen[-MAX_SEEN:],
        }
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot save crash state", extra={"path": str(path), "error": str(exc)})


class CrashCollector:
    """Finds the previous boot's crash evidence under `root` once per boot. See the module text."""

    def __init__(
        self,
        *,
        cluster: str,
        node: str,
        root: Path,
        state_file: Path | None,
        pstore_dirs: Sequence[str] = DEFAULT_PSTORE_DIRS,
        kdump_dirs: Sequence[str] = DEFAULT_KDUMP_DIRS,
        journal_command: Sequence[str] | None = ("journalctl",),
        max_lines: int = MAX_CRASH_LINES,
        max_bytes: int = MAX_CRASH_REPORT_BYTES,
        lookback_s: float = 7 * 86_400.0,
        journal_timeout_s: float = 10.0,
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.root = root
        self.state_file = state_file
        self.pstore_dirs = tuple(pstore_dirs)
        self.kdump_dirs = tuple(kdump_dirs)
        self.journal_command = list(journal_command) if journal_command else None
        self.max_lines = min(max_lines, MAX_CRASH_LINES)
        self.max_bytes = max_bytes
        self.lookback_s = lookback_s
        self.journal_timeout_s = journal_timeout_s
        self.problems: list[str] = []
        self._state = CrashState.load(state_file)
        self._pending: tuple[CrashReport, list[str]] | None = None

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    # -- the once-per-boot decision ------------------------------------------------------------

    async def check(
        self,
        *,
        boot_id: str | None,
        kernel_release: str | None = None,
        os_image: str | None = None,
        uptime_s: float | None = None,
    ) -> CrashReport | None:
        """The crash report this boot owes, or None. Returns the same report until `reported()`."""
        self.problems.clear()
        if boot_id is None:
            return None
        state = self._state
        if state is not None and state.boot_id == boot_id:
            if state.orderly:  # the agent was restarted within this boot: a later crash is unexpected again
                state.orderly = False
                state.save(self.state_file)
            if state.handled:
                return None
            if self._pending is not None:
                return self._pending[0]
        else:
            state = CrashState(
                boot_id=boot_id,
                previous_boot_id=state.boot_id if state else None,
                unexpected=state is not None and not state.orderly,
                seen=state.seen if state else [],
            )
            self._state = state
            state.save(self.state_file)
        found = await asyncio.to_thread(self._gather, set(state.seen))
        if not found and not state.unexpected:
            state.handled = True
            state.save(self.state_file)
            return None
        if state.unexpected and self.journal_command is not None:
            journal = await self._journal(state.previous_boot_id)
            if journal is not None:
                found.append(journal)
        evidence = [f.evidence for f in found]
        report = CrashReport(
            cluster=self.cluster,
            node=self.node,
            boot_id=boot_id,
            previous_boot_id=state.previous_boot_id,
            unexpected=state.unexpected,
            kernel_release=kernel_release,
            os_image=os_image,
            uptime_s=uptime_s,
            evidence=tuple(evidence[:MAX_CRASH_EVIDENCE]),
            evidence_dropped=max(0, len(evidence) - MAX_CRASH_EVIDENCE),
        )
        report = bound_report(report, max_bytes=self.max_bytes)
        self._pending = (report, [fp for f in found for fp in f.fingerprints])
        return report

    def reported(self, report: CrashReport) -> None:
        """The stream has the report: never send it (or its evidence) again."""
        state = self._state
        if state is None or state.boot_id != report.boot_id:
            return
        fingerprints = self._pending[1] if self._pending and self._pending[0].id == report.id else []
        state.handled = True
        state.seen = [*state.seen, *fingerprints][-MAX_SEEN:]
        state.save(self.state_file)
        self._pending = None

    def mark_orderly(self) -> None:
        """The agent is being stopped in an orderly way (SIGTERM at shutdown): the next boot is expected."""
        if self._state is None or self._state.boot_id is None:
            return
        self._state.orderly = True
        self._state.save(self.state_file)

    # -- sources ---------------------------------------------------------------------------------

    def _gather(self, seen: set[str]) -> list[_Found]:
        cutoff = time.time() - self.lookback_s
        found = self._pstore(seen, cutoff) + self._kdump(seen, cutoff)
        return found

    def _list(self, directory: Path) -> list[Path]:
        if not directory.is_dir():
            return []
        try:
            return list(directory.iterdir())
        except OSError as exc:
            self.problems.append(f"cannot list {directory}: {exc.strerror or exc}")
            return []

    def _stat_ok(self, path: Path, cutoff: float) -> tuple[int, float] | None:
        try:
            st = path.stat()
        except OSError as exc:
            self.problems.append(f"cannot stat {path}: {exc.strerror or exc}")
            return None
        if st.st_mtime < cutoff:
            return None
        return st.st_size, st.st_mtime

    def _unseen(
        self, path: Path, host_path: str, seen: set[str], cutoff: float
    ) -> tuple[tuple[int, float], str, str] | None:
        """(stat, fingerprint, text) of an evidence file recent enough and not reported before; else None."""
        stat = self._stat_ok(path, cutoff)
        if stat is None:
            return None
        fingerprint = _fingerprint(host_path, stat)
        if fingerprint in seen:
            return None
        text = self._read_tail(path)
        return None if text is None else (stat, fingerprint, text)

    def _read_tail(self, path: Path) -> str | None:
        try:
            with path.open("rb") as fh:
                size = fh.seek(0, 2)
                fh.seek(max(0, size - _MAX_READ_BYTES))
                data = fh.read()
        except OSError as exc:
            self.problems.append(f"cannot read {path}: {exc.strerror or exc}")
            return None
        return data.decode("utf-8", errors="replace")

    def _pstore(self, seen: set[str], cutoff: float) -> list[_Found]:
        records: list[tuple[PstoreRecord, str, str, float, int]] = []  # record, host path, fingerprint, mtime, size
        for host_dir in self.pstore_dirs:
            base = self.path(host_dir)
            entries = self._list(base)
            candidates = sorted(p for p in entries if p.is_file())
            # systemd-pstore keeps efi dumps as <dir>/dmesg.txt (already reassembled)
            candidates += sorted(p / "dmesg.txt" for p in entries if p.is_dir() and (p / "dmesg.txt").is_file())
            for path in candidates:
                name = path.name if path.name != "dmesg.txt" else f"dmesg-systemd_pstore-{path.parent.name}"
                if not name.startswith(("dmesg-", "console-")) or name.endswith(".enc.z"):
                    continue
                host_path = f"{host_dir.rstrip('/')}/{path.relative_to(base)}"
                unseen = self._unseen(path, host_path, seen, cutoff)
                if unseen is None:
                    continue
                stat, fingerprint, text = unseen
                records.append((parse_pstore_text(name, text), host_path, fingerprint, stat[1], stat[0]))
        by_name = {r[0].name: r for r in records}
        found: list[_Found] = []
        for group in assemble_parts([r[0] for r in records]):
            lines: list[str] = []
            for record in group:
                lines.extend(record.lines)
            first = by_name[group[-1].name]  # Part1: the newest piece, its header names the dump
            bounded, dropped = bound_lines(lines, max_lines=self.max_lines)
            header = group[-1]
            found.append(
                _Found(
                    evidence=CrashEvidence(
                        source="pstore",
                        path=first[1] if len(group) == 1 else ",".join(by_name[r.name][1] for r in group),
                        backend=header.backend,
                        record=f"{header.reason}#{header.count} Part{header.part}" if header.reason else None,
                        reason=header.reason,
                        written_at=datetime.fromtimestamp(first[3], tz=UTC),
                        size_bytes=sum(by_name[r.name][4] for r in group),
                        lines=bounded,
                        lines_dropped=dropped,
                    ),
                    fingerprints=[by_name[r.name][2] for r in group],
                )
            )
        # a panic record says more than the oops before it; console logs come last
        found.sort(key=lambda f: ("/console-" in f.evidence.path, f.evidence.reason != "Panic"))
        return found

    def _kdump(self, seen: set[str], cutoff: float) -> list[_Found]:
        found: list[tuple[float, _Found]] = []
        for host_dir in self.kdump_dirs:
            base = self.path(host_dir)
            for directory in sorted(p for p in self._list(base) if p.is_dir()):
                for pattern, layout in _KDUMP_FILES:
                    for path in sorted(directory.glob(pattern)):
                        host_path = f"{host_dir.rstrip('/')}/{directory.name}/{path.name}"
                        unseen = self._unseen(path, host_path, seen, cutoff)
                        if unseen is None:
                            continue
                        stat, fingerprint, text = unseen
                        bounded, dropped = bound_lines(text.splitlines(), max_lines=self.max_lines)
                        evidence = CrashEvidence(
                            source="kdump",
                            path=host_path,
                            backend=layout,
                            written_at=datetime.fromtimestamp(stat[1], tz=UTC),
                            size_bytes=stat[0],
                            lines=bounded,
                            lines_dropped=dropped,
                        )
                        found.append((stat[1], _Found(evidence=evidence, fingerprints=[fingerprint])))
        found.sort(key=lambda item: -item[0])  # newest dump first
        return [f for _, f in found]

    async def _journal(self, previous_boot_id: str | None) -> _Found | None:
        assert self.journal_command is not None
        boot = previous_boot_id.replace("-", "") if previous_boot_id else "-1"
        args = [*self.journal_command, "-k", "-b", boot, "-o", "cat", "--no-pager", "-n", str(self.max_lines)]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            self.problems.append(f"cannot run {args[0]}: {exc.strerror or exc}")
            return None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=self.journal_timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            self.problems.append(f"{args[0]} did not answer within {self.journal_timeout_s}s")
            return None
        if proc.returncode != 0:
            self.problems.append(f"{' '.join(args)} exited {proc.returncode}: {err.decode(errors='replace')[:200]}")
            return None
        lines = [line for line in out.decode("utf-8", errors="replace").splitlines() if not line.startswith("-- ")]
        if not lines:
            return None
        bounded, dropped = bound_lines(lines, max_lines=self.max_lines)
        evidence = CrashEvidence(
            source="journal",
            path=" ".join(args),
            size_bytes=len(out),
            lines=bounded,
            lines_dropped=dropped,
        )
        return _Found(evidence=evidence, fingerprints=[f"journal:{boot}"])


def _fingerprint(host_path: str, stat: tuple[int, float]) -> str:
    raw = f"{host_path}\x1f{stat[0]}\x1f{stat[1]:.6f}"
    return hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()[:20]
