"""`CrashReport`: what a node's previous boot left behind when it ended in a crash.

The node agent sends one per boot (on the first probe after an unexpected reboot, `Nats-Msg-Id` from
the boot id) to `<prefix>.crash.<cluster>.<node>`, kept in the CRASHES stream. Each `CrashEvidence` is
one source as the kernel or the crash tooling wrote it: a pstore record (`dmesg-ramoops-N`,
`dmesg-efi-…`, reassembled from its parts), a kdump `vmcore-dmesg.txt` / `dmesg.<stamp>`, or the kernel
messages the journal kept of the previous boot. Lines are kept verbatim (kmsg `<N>` level prefixes and
dmesg timestamps included), bounded: the *last* lines of each source (where the crash is), each line
cut at `MAX_CRASH_LINE_CHARS`, and the whole report under `MAX_CRASH_REPORT_BYTES`.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from nodeheal.schemas.base import Frozen, Message, UtcDatetime

CRASH_SCHEMA: Final = "nodeheal.crash/v1"
MAX_CRASH_EVIDENCE: Final = 8
MAX_CRASH_LINES: Final = 400
"""Lines kept per evidence (its tail); the crash signature extractor reads at most 400 lines per report."""
MAX_CRASH_LINE_CHARS: Final = 512
MAX_CRASH_REPORT_BYTES: Final = 256 * 1024
"""The agent keeps a report's JSON under this size (NATS' default max payload is 1 MiB)."""

CrashSource = Literal["pstore", "kdump", "journal"]


class CrashEvidence(Frozen):
    source: CrashSource
    path: str = Field(description="host path of the file (pstore, kdump) or the command (journal)")
    backend: str | None = Field(
        default=None,
        description="pstore backend (ramoops, efi, erst, ...) or kdump layout (kdumpctl, kdump-tools, systemd-pstore)",
    )
    record: str | None = Field(default=None, description="pstore record header, e.g. 'Panic#2 Part1'")
    reason: str | None = Field(default=None, description="pstore dump reason: Oops, Panic, Emergency, ...")
    written_at: UtcDatetime | None = Field(default=None, description="file modification time (pstore: the dump)")
    size_bytes: int = Field(default=0, ge=0, description="size of the source as found")
    lines: tuple[str, ...] = Field(default=(), max_length=MAX_CRASH_LINES)
    lines_dropped: int = Field(default=0, ge=0, description="earlier lines not sent because of the bound")


class CrashReport(Message):
    schema_: Literal["nodeheal.crash/v1"] = Field(default=CRASH_SCHEMA, alias="schema")
    boot_id: str = Field(min_length=1, description="the boot that found the evidence (the one after the crash)")
    previous_boot_id: str | None = Field(default=None, description="the boot that crashed, when the agent saw it")
    unexpected: bool = Field(description="no orderly stop or reboot of ours was recorded for the previous boot")
    kernel_release: str | None = Field(default=None, description="the release running now")
    os_image: str | None = None
    uptime_s: float | None = Field(default=None, ge=0)
    evidence: tuple[CrashEvidence, ...] = Field(default=(), max_length=MAX_CRASH_EVIDENCE)
    evidence_dropped: int = Field(default=0, ge=0, description="sources found but not sent because of the bounds")
