"""Configuration of the node agent (env prefix `NODEHEAL_AGENT_`, nested with `__`)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from nodeheal.agent.crash import DEFAULT_KDUMP_DIRS, DEFAULT_PSTORE_DIRS
from nodeheal.agent.host import DEFAULT_EXCLUDED_PREFIXES, DEFAULT_FS_TYPES
from nodeheal.runtime.service import ServiceSettings
from nodeheal.schemas.crash import MAX_CRASH_LINES, MAX_CRASH_REPORT_BYTES
from nodeheal.schemas.probe import MAX_KERNEL_LINES
from nodeheal.schemas.subjects import escape_token


class CleanSettings(BaseModel):
    allowed_dirs: list[str] = Field(
        default_factory=lambda: ["/var/log/pods", "/var/lib/systemd/coredump"],
        description="host directories clean_disk may delete old files in ('/' is never allowed)",
    )
    max_age_days: float = Field(default=7.0, gt=0, description="only files older than this are deleted")
    image_prune_command: list[str] = Field(
        default_factory=lambda: ["crictl", "rmi", "--prune"],
        description="what clean_disk target 'container-images' runs",
    )
    image_fs_path: str = Field(
        default="/var/lib/containerd", description="host path whose free space shows what the prune freed"
    )
    command_timeout_s: float = Field(default=300.0, gt=0)
    journal_vacuum_command: list[str] = Field(
        default_factory=lambda: ["journalctl", "--vacuum-time=2d"], description="what clean_disk target 'journal' runs"
    )
    journal_path: str = Field(default="/var/log/journal", description="host path whose free space shows the gain")
    keep_newest_in: list[str] = Field(
        default_factory=lambda: ["/var/lib/systemd/coredump"],
        description="core-dump directories whose newest entry clean_disk never deletes",
    )
    protected_dirs: list[str] = Field(
        default_factory=lambda: ["/var/crash", "/var/lib/systemd/pstore"],
        description="kernel crash evidence (kdump, pstore): clean_disk never deletes in them, whatever the allow-list",
    )


class CrashSettings(BaseModel):
    enabled: bool = Field(default=True, description="report the previous boot's crash evidence once per boot")
    pstore_dirs: list[str] = Field(default_factory=lambda: list(DEFAULT_PSTORE_DIRS))
    kdump_dirs: list[str] = Field(default_factory=lambda: list(DEFAULT_KDUMP_DIRS))
    journal: bool = Field(default=True, description="add `journalctl -k -b <previous boot>` after an unexpected reboot")
    max_lines: int = Field(default=MAX_CRASH_LINES, ge=1, le=MAX_CRASH_LINES, description="lines kept per source")
    max_bytes: int = Field(default=MAX_CRASH_REPORT_BYTES, ge=4096, le=1024 * 1024)
    lookback_days: float = Field(default=7.0, gt=0, description="older pstore / kdump files are not reported")


class AgentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NODEHEAL_AGENT_", env_nested_delimiter="__", extra="ignore")

    node_name: str = Field(default_factory=socket.gethostname, description="Kubernetes node name (downward API)")
    interval_s: float = Field(default=10.0, gt=0, description="seconds between probes")
    full_every: int | None = Field(
        default=None,
        ge=1,
        description="a full probe every this many probes, cheap heartbeats between (staggered by node);"
        " default: as many intervals as fit in 30 s (6 at interval_s=5, 3 at 10). full_every × interval_s"
        " must stay ≤ 60 s, and ≤ 30 s keeps a dead service or a full disk found within a minute",
    )
    host_root: Path = Field(default=Path("/"), description="where the node's / is visible (/host in the DaemonSet)")
    mounts_file: str = Field(default="/proc/1/mounts", description="host path of the mount table (PID 1 = the host's)")
    mount_points: list[str] = Field(
        default_factory=list, description="mount points to report; empty = the fs_markers' ones, else by fs_types"
    )
    fs_markers: dict[str, str] = Field(
        default_factory=dict,
        description="host mount point → a directory in this container on that file system (statvfs reads its"
        " usage there instead of under host_root; the DaemonSet mounts one empty marker per file system)",
    )
    fs_types: list[str] = Field(default_factory=lambda: list(DEFAULT_FS_TYPES))
    excluded_mount_prefixes: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDED_PREFIXES))
    services: list[str] = Field(
        default_factory=lambda: ["kubelet", "containerd"],
        description="systemd units to report and the only ones restart_service may restart",
    )
    systemctl_command: list[str] = Field(default_factory=lambda: ["systemctl"])
    kernel_log: Literal["kmsg", "journal", "off"] = "kmsg"
    kmsg_path: str = Field(default="/dev/kmsg", description="host path (under host_root) of the kernel log device")
    journalctl_command: list[str] = Field(default_factory=lambda: ["journalctl"])
    max_kernel_lines: int = Field(default=MAX_KERNEL_LINES, ge=0, le=MAX_KERNEL_LINES)
    state_dir: Path | None = Field(
        default=None,
        description="writable directory for the kmsg position, the probe sequence, the lease fence and the"
        " executed commands' results (survive restarts)",
    )
    outbox_max: int = Field(default=360, ge=1, description="probes kept while NATS is away; older ones are dropped")
    clean: CleanSettings = Field(default_factory=CleanSettings)
    crash: CrashSettings = Field(default_factory=CrashSettings)
    command_remember: int = Field(
        default=10_000,
        ge=1,
        description="action ids (and results) remembered for idempotent replies, also on disk with state_dir",
    )
    stop_grace_s: float = Field(
        default=65.0,
        ge=0,
        description="on SIGTERM, commands under way are waited for this long to finish and answer (each ends by"
        " its request's deadline, 60 s at the remediator's default); keep it below the pod's"
        " terminationGracePeriodSeconds",
    )
    dlq_service: str = "node-agent"
    inbox_per_node: bool = Field(
        default=True,
        description="append the escaped cluster and node tokens to nats.inbox_prefix, so replies to this agent"
        " (its PubAcks) arrive on `<inbox_prefix>.<cluster>.<node>.…`, the only inbox NATS lets this node read"
        " under deploy/nats/natsauth.py",
    )

    @model_validator(mode="after")
    def _full_probe_within_a_minute(self) -> AgentSettings:
        if self.full_every is not None and self.full_every * self.interval_s > 60:
            msg = (
                f"full_every={self.full_every} × interval_s={self.interval_s:g} = "
                f"{self.full_every * self.interval_s:g} s between full probes: a dead service or a full disk"
                " could not be found within the 1-minute detection budget (keep it ≤ 30 s)"
            )
            raise ValueError(msg)
        return self

    def nats_inbox_prefix(self) -> str:
        """The inbox prefix this agent connects with."""
        if not self.inbox_per_node:
            return self.nats.inbox_prefix
        return f"{self.nats.inbox_prefix}.{escape_token(self.cluster)}.{escape_token(self.node_name)}"
