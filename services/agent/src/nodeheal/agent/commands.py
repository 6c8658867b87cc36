"""Node-local repair commands the agent executes: `restart_service`, `clean_disk`, `ping`.

Safety first, because these act on a production node:
- `restart_service` only restarts units in the configured service list.
- `clean_disk` only touches directories in the configured allow-list (host paths). The target is
  resolved inside the host root; `/`, the host root itself, anything whose resolved path leaves the
  allow-list (`..`, symlinks) and symlinked targets are refused with the reason. Inside an allowed
  directory only regular files older than `max_age_days` are deleted; symlinks are never followed or
  deleted. The special target `container-images` runs the configured image-prune command
  (`crictl rmi --prune` by default) and reports the space it freed on the image file system.
- Every command is idempotent per (action id, dry run): a repeated request returns the first result
  without acting again, also while the first is still running.
- `dry_run` reports what would be done and changes nothing.

This module must never talk to NATS; `app` feeds it decoded `NodeCommand`s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nodeheal.agent.host import StatVfs
from nodeheal.agent.systemd import Systemd, unit_name
from nodeheal.schemas.commands import NodeCommand, NodeCommandResult

log = logging.getLogger("nodeheal.agent.commands")

IMAGES_TARGET = "container-images"


class RefusedError(Exception):
    """The command is not allowed on this node; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class CleanPolicy:
    allowed_dirs: tuple[str, ...]
    max_age_days: float = 7.0
    image_prune_command: tuple[str, ...] = ("crictl", "rmi", "--prune")
    image_fs_path: str = "/var/lib/containerd"
    command_timeout_s: float = 300.0


@dataclass
class CommandExecutor:
    node: str
    cluster: str
    host_root: Path
    services: tuple[str, ...]
    systemd: Systemd
    clean: CleanPolicy
    statvfs: StatVfs = os.statvfs
    statfs_path: Callable[[str], str] | None = None
    """Where to measure a host path's file system (`HostReader.statfs_path`); default: under host_root."""
    remember: int = 10_000
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self._results: OrderedDict[tuple[str, bool], asyncio.Future[NodeCommandResult]] = OrderedDict()
        self.executed = 0  # commands that really ran (not replays of a known action id)

    async def execute(self, command: NodeCommand) -> NodeCommandResult:
        key = (command.action_id, command.dry_run)
        known = self._results.get(key)
        if known is not None:
            self._results.move_to_end(key)
            return await asyncio.shield(known)
        future: asyncio.Future[NodeCommandResult] = asyncio.get_running_loop().create_future()
        self._results[key] = future
        while len(self._results) > self.remember:
            self._results.popitem(last=False)
        try:
            result = await self._run(command)
        except Exception as exc:  # an unexpected failure is still an answer, never a dead agent
            log.exception("command failed", extra={"node": self.node, "action_id": command.action_id})
            result = self._result(command, ok=False, detail=f"{command.command} failed: {exc}")
        future.set_result(result)
        return result

    def _result(self, command: NodeCommand, *, ok: bool, detail: str, freed: int | None = None) -> NodeCommandResult:
        return NodeCommandResult(action_id=command.action_id, node=self.node, ok=ok, detail=detail, freed_bytes=freed)

    async def _run(self, command: NodeCommand) -> NodeCommandResult:
        if command.node != self.node or command.cluster != self.cluster:
            return self._result(
                command,
                ok=False,
                detail=f"refused: command is for {command.cluster}/{command.node}, "
                f"this agent is {self.cluster}/{self.node}",
            )
        self.executed += 1
        if command.command == "ping":
            return self._result(command, ok=True, detail="pong")
        if command.command == "restart_service":
            return await self._restart(command)
        return await self._clean(command)

    async def _restart(self, command: NodeCommand) -> NodeCommandResult:
        service = command.target or ""
        if service not in self.services and unit_name(service) not in {unit_name(s) for s in self.services}:
            allowed = ", ".join(self.services) or "(none configured)"
            return self._result(
                command,
                ok=False,
                detail=f"refused: service {service!r} is not in the agent's service list ({allowed}); "
                "add it to NODEHEAL_AGENT_SERVICES to allow restarts",
            )
        if command.dry_run:
            return self._result(command, ok=True, detail=f"dry run: would restart {unit_name(service)}")
        outcome = await self.systemd.restart(service)
        return self._result(command, ok=outcome.ok, detail=outcome.detail)

    # -- clean_disk --------------------------------------------------------------------------

    def _host(self, host_path: str) -> Path:
        return self.host_root / host_path.lstrip("/")

    def resolve_clean_target(self, target: str | None) -> Path:
        """The local path to clean, or `RefusedError` saying why not."""
        allowed = ", ".join(self.clean.allowed_dirs) or "(none configured)"
        if not target:
            msg = f"refused: clean_disk needs a target directory (allowed: {allowed}, or {IMAGES_TARGET!r})"
            raise RefusedError(msg)
        if not target.startswith("/"):
            msg = f"refused: clean_disk target {target!r} must be an absolute host path (allowed: {allowed})"
            raise RefusedError(msg)
        normalized = os.path.normpath(target)
        if normalized == "/":
            msg = "refused: clean_disk on '/' is never allowed"
            raise RefusedError(msg)
        local = self._host(normalized)
        root_real = os.path.realpath(self.host_root)
        if os.path.islink(local):
            msg = f"refused: clean_disk target {target!r} is a symlink; give the real directory"
            raise RefusedError(msg)
        real = os.path.realpath(local)
        for allowed_dir in self.clean.allowed_dirs:
            allowed_real = os.path.realpath(self._host(os.path.normpath(allowed_dir)))
            if allowed_real == root_real:
                continue  # an allow-list entry of '/' is ignored: it would allow everything
            if real == allowed_real or real.startswith(allowed_real + os.sep):
                return Path(real)
        msg = (
            f"refused: clean_disk target {target!r} (resolves to {real.removeprefix(root_real) or '/'}) "
            f"is outside the allow-list ({allowed}); extend NODEHEAL_AGENT_CLEAN__ALLOWED_DIRS if it is safe"
        )
        raise RefusedError(msg)

    async def _clean(self, command: NodeCommand) -> NodeCommandResult:
        if command.target == IMAGES_TARGET:
            return await self._prune_images(command)
        try:
            directory = self.resolve_clean_target(command.target)
        except RefusedError as exc:
            return self._result(command, ok=False, detail=str(exc))
        if not directory.is_dir():
            return self._result(command, ok=False, detail=f"clean_disk target {command.target!r} is not a directory")
        cutoff = self.clock() - self.clean.max_age_days * 86_400
        removed, freed, errors = await asyncio.to_thread(
            _remove_old_files, directory, cutoff=cutoff, dry_run=command.dry_run
        )
        verb = "would delete" if command.dry_run else "deleted"
        detail = (
            f"{'dry run: ' if command.dry_run else ''}{verb} {removed} files older than "
            f"{self.clean.max_age_days:g} days under {command.target} ({freed} bytes)"
        )
        if errors:
            detail += f"; {len(errors)} could not be removed, first: {errors[0]}"
        return self._result(command, ok=not errors or removed > 0, detail=detail, freed=freed)

    async def _prune_images(self, command: NodeCommand) -> NodeCommandResult:
        cmd = list(self.clean.image_prune_command)
        if not cmd:
            return self._result(command, ok=False, detail="refused: no image prune command configured")
        if command.dry_run:
            return self._result(command, ok=True, detail=f"dry run: would run {' '.join(cmd)}")
        image_fs = self.clean.image_fs_path
        fs_path = self.statfs_path(image_fs) if self.statfs_path else str(self._host(image_fs))
        before = _free_bytes(self.statvfs, fs_path)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=self.clean.command_timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return self._result(
                command, ok=False, detail=f"{' '.join(cmd)} did not finish in {self.clean.command_timeout_s}s"
            )
        after = _free_bytes(self.statvfs, fs_path)
        freed = max(after - before, 0) if before is not None and after is not None else None
        if proc.returncode != 0:
            return self._result(
                command,
                ok=False,
                detail=f"{' '.join(cmd)} exited {proc.returncode}: {err.decode(errors='replace')[:300]}",
            )
        return self._result(
            command, ok=True, detail=f"ran {' '.join(cmd)}: {out.decode(errors='replace')[:300]}", freed=freed
        )


def _free_bytes(statvfs: StatVfs, path: str) -> int | None:
    try:
        st = statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _remove_old_files(directory: Path, *, cutoff: float, dry_run: bool) -> tuple[int, int, list[str]]:
    """Delete regular files with mtime before `cutoff` under `directory`, never following symlinks and
    never leaving the directory's file system."""
    removed = freed = 0
    errors: list[str] = []
    root_dev = directory.stat().st_dev
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        # do not descend into other file systems mounted below the allowed directory
        dirnames[:] = [d for d in dirnames if _same_dev(os.path.join(dirpath, d), root_dev)]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError as exc:
                errors.append(f"{path}: {exc.strerror}")
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
                continue
            if not dry_run:
                try:
                    os.unlink(path)
                except OSError as exc:
                    errors.append(f"{path}: {exc.strerror}")
                    continue
            removed += 1
            freed += st.st_blocks * 512 if st.st_blocks else st.st_size
    return removed, freed, errors


def _same_dev(path: str, dev: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_dev == dev
