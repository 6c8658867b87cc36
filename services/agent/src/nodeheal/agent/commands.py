"""Node-local repair commands the agent executes: `restart_service`, `clean_disk`, `ping`.

Safety first, because these act on a production node:
- `restart_service` only restarts units in the configured service list.
- `clean_disk` only touches directories in the configured allow-list (host paths). The target is
  resolved inside the host root; `/`, the host root itself, anything whose resolved path leaves the
  allow-list (`..`, symlinks) and symlinked targets are refused with the reason. Inside an allowed
  directory only regular files older than `max_age_days` are deleted; symlinks are never followed or
  deleted; the newest entry of a core-dump directory (`/var/lib/systemd/coredump`) is always kept.
  Kernel crash evidence is never deleted: a target in a protected directory (`/var/crash` of kdump,
  `/var/lib/systemd/pstore`) is refused, and a walk never enters one (`CleanPolicy.protected_dirs`):
  the diagnoser may have found a new crash bucket there, and the kernel team needs the dump.
  The special target `container-images` runs the configured image-prune command (`crictl rmi --prune`
  by default) and `journal` the journal vacuum command; both report the space they freed. A target may
  list several (`container-images,/var/log/pods,journal`); the command fails when nothing was freed.
- `restart_service` target `fd-holder` restarts the systemd unit of the process holding the most file
  descriptors when that unit is in the service list; otherwise it is refused with the process named.
- Every command is idempotent per (action id, dry run): a repeated request returns the first result
  without acting again, also while the first is still running. With a state directory the results are
  also kept on disk (the last `remember`, one JSON line each, written before the reply), so a command
  re-sent after an agent restart — a remediator that died between sending it and recording its result
  asks again with the same action id — gets the stored result and nothing runs twice. A command is also
  written there (`started`) before it runs: one killed mid-run (SIGKILL, node power cut) is answered after the
  restart as interrupted with an unknown effect, never run a second time.
- The state directory fails closed: a command that changes the node is not started when its `started` line or
  the lease fence cannot be written (read-only or full volume) or the kept fence cannot be read — without them a
  restart could run it twice or let a stale remediator through. The refusal names the file and what to fix;
  `refused_state` counts them.
- Fencing: a command whose `lease_revision` is lower than the highest one this agent already executed is
  refused (the revision is persisted in the state directory, so a restart keeps the fence). Revisions compare
  within one lease bucket (`lease_epoch`, its creation time): a newer bucket starts a new fence, an older one is
  refused.
- `dry_run` reports what would be done and changes nothing.

This module must never talk to NATS; `app` feeds it decoded `NodeCommand`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodeheal.agent.host import HostFiles, LocalHostFiles, StatVfs, top_fd_holders
from nodeheal.agent.systemd import Systemd, run_bounded, unit_name
from nodeheal.schemas.commands import (
    EXPIRY_SKEW_S,
    FD_HOLDER_TARGET,
    IMAGES_TARGET,
    JOURNAL_TARGET,
    NodeCommand,
    NodeCommandResult,
)

log = logging.getLogger("nodeheal.agent.commands")

REPLY_MARGIN_S = 2.0
"""A command's work ends this long before its `expires_at`, so the answer reaches a sender still waiting."""
MIN_WORK_S = 1.0
"""Less time than this left before the deadline: the command (or a further clean target) is not started."""


class RefusedError(Exception):
    """The command is not allowed on this node; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class CleanPolicy:
    allowed_dirs: tuple[str, ...]
    max_age_days: float = 7.0
    image_prune_command: tuple[str, ...] = ("crictl", "rmi", "--prune")
    image_fs_path: str = "/var/lib/containerd"
    command_timeout_s: float = 300.0
    journal_vacuum_command: tuple[str, ...] = ("journalctl", "--vacuum-time=2d")
    journal_path: str = "/var/log/journal"
    keep_newest_in: tuple[str, ...] = ("/var/lib/systemd/coredump",)
    protected_dirs: tuple[str, ...] = ("/var/crash", "/var/lib/systemd/pstore")
    """kernel crash evidence (kdump, pstore): never deleted, whatever the allow-list says"""


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
    fence_file: Path | None = None
    results_file: Path | None = None
    """Where executed commands' results are kept across restarts (JSON lines); `None`: memory only."""
    files: HostFiles | None = None
    """How the node's /proc is read (the fd holder); `None`: the local file system under host_root."""

    def __post_init__(self) -> None:
        self._results: OrderedDict[tuple[str, bool], asyncio.Future[NodeCommandResult]] = OrderedDict()
        self._stored: OrderedDict[tuple[str, bool], NodeCommandResult] = OrderedDict()
        self._lines = 0  # lines in results_file (compacted when it reaches twice `remember`)
        self._running: dict[tuple[str, bool], str] = {}  # begun, not finished: their `started` lines
        self.executed = 0  # commands that really ran (not replays of a known action id)
        self.fenced = 0  # commands refused for an old lease revision
        self.replayed = 0  # commands answered from the results an earlier run stored
        self.expired = 0  # commands refused because their sender had stopped waiting (`expires_at`)
        self.refused_state = 0  # commands not started: the state directory could not keep their record
        self._fence_broken: str | None = None  # why the kept fence could not be read (then lease commands wait)
        self.last_epoch, self.last_revision = self._load_fence()
        self._load_results()

    def _load_results(self) -> None:
        """The results an earlier run of this agent stored: answered again, never re-run."""
        if self.results_file is None:
            return
        try:
            lines = self.results_file.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        known: list[tuple[tuple[str, bool], NodeCommandResult]] = []
        started: dict[tuple[str, bool], NodeCommandResult] = {}  # begun, no result yet (in file order)
        for line in lines:
            try:
                raw = json.loads(line)
                key = (str(raw["action_id"]), bool(raw["dry_run"]))
                if "started" in raw:
                    started[key] = _interrupted(key[0], str(raw["started"]), node=self.node)
                    continue
                result = NodeCommandResult.model_validate(raw["result"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of a crash: that command is not known
            started.pop(key, None)
            known.append((key, result))
        if started:
            log.warning(
                "commands were under way when the agent stopped; their effect is unknown and they are not re-run",
                extra={"action_ids": [k[0] for k in started]},
            )
        known.extend(started.items())
        for key, result in known[-self.remember :]:
            self._stored[key] = result
            self._stored.move_to_end(key)
        self._lines = len(lines)
        if len(lines) > 2 * self.remember:
            self._rewrite_results()

    def _rewrite_results(self) -> None:
        assert self.results_file is not None
        try:
            tmp = self.results_file.with_suffix(".tmp")
            lines = [_result_line(k, r) for k, r in self._stored.items()]
            lines += [_started_line(k, c) for k, c in self._running.items() if k not in self._stored]
            tmp.write_text("".join(lines), encoding="utf-8")
            os.replace(tmp, self.results_file)
            self._lines = len(lines)
        except OSError as exc:
            log.warning("cannot compact the command results", extra={"error": str(exc)})

    def _store(self, key: tuple[str, bool], result: NodeCommandResult) -> None:
        """Keep a result on disk before it is answered (bounded: compacted at twice `remember` lines)."""
        self._running.pop(key, None)
        self._stored[key] = result
        self._stored.move_to_end(key)
        while len(self._stored) > self.remember:
            self._stored.popitem(last=False)
        if self.results_file is None:
            return
        if self._lines >= 2 * self.remember:
            self._rewrite_results()
            return
        try:
            self._append(_result_line(key, result))
        except OSError as exc:
            log.warning("cannot save a command result", extra={"error": str(exc)})

    def _append(self, line: str) -> None:
        assert self.results_file is not None
        with self.results_file.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._lines += 1

    def _begin(self, key: tuple[str, bool], command: NodeCommand) -> str | None:
        """Write that the command starts (before it runs): refusal reason when it cannot be written, else None.
        Only for commands that change the node; without a results file nothing is kept (memory only)."""
        if self.results_file is None or command.dry_run or command.command == "ping":
            return None
        try:
            self._append(_started_line(key, command.command))
        except OSError as exc:
            return _state_refusal(command, self.results_file, exc, "a re-sent command could run twice")
        self._running[key] = command.command
        return None

    def _load_fence(self) -> tuple[int | None, int]:
        """(lease epoch, revision) of the newest lease this agent executed for; (None, 0) when none is kept."""
        if self.fence_file is None:
            return None, 0
        try:
            raw = json.loads(self.fence_file.read_text())
            epoch = raw.get("lease_epoch")
            return (int(epoch) if epoch is not None else None), int(raw["lease_revision"])
        except (FileNotFoundError, NotADirectoryError):
            return None, 0  # no lease executed yet on this node (a broken directory fails at the first write)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # kept but unreadable: starting from 0 would let a stale remediator through. Commands with a lease
            # wait until an operator has looked (the refusal says what to do)
            self._fence_broken = f"{type(exc).__name__}: {exc}"
            log.error(
                "the kept lease fence cannot be read; commands with a lease are refused until it is fixed",
                extra={"file": str(self.fence_file), "error": self._fence_broken},
            )
            return None, 0

    def _late(self, command: NodeCommand) -> str | None:
        """Refusal reason when the request arrives after its sender stopped waiting (`expires_at`, with
        `EXPIRY_SKEW_S` for the clocks), else None. nats-py keeps a request published while the remediator's
        connection is down and sends it after the reconnect: by then the remediator had recorded the step as
        failed and gone to the next rung, and the command ran anyway (a kubelet restarted in the middle of the
        drain that followed)."""
        if command.expires_at is None or command.command == "ping":
            return None
        late = self.clock() - command.expires_at.timestamp()
        if late <= EXPIRY_SKEW_S:
            return None
        return (
            f"refused: the request came {late:.0f} s after its sender stopped waiting "
            f"({command.expires_at.isoformat()}); not started"
        )

    def _fence(self, command: NodeCommand) -> str | None:
        """Refusal reason when the command's lease is older than one already executed, else None (and the lease
        is remembered, on disk when there is a state directory, before acting).

        A lease is (bucket epoch, revision). Revisions only compare within one bucket: a bucket created anew (a
        rebuilt JetStream) starts again at 1, so a command of a newer epoch starts a new fence, and one of an
        older epoch is a stale holder of the old bucket. A command without an epoch (an older sender) is compared
        by its revision alone, as before."""
        rev = command.lease_revision
        if rev is None or command.command == "ping" or command.dry_run:
            return None
        if self._fence_broken is not None:
            return (
                f"refused: the lease fence kept in {self.fence_file} cannot be read ({self._fence_broken}); "
                "nothing runs under a lease until it is fixed: check that no older remediator is running, then "
                "delete the file and restart the agent"
            )
        epoch = command.lease_epoch
        if epoch is not None and self.last_epoch is not None and epoch < self.last_epoch:
            return (
                f"refused: the command's lease bucket (created at epoch {epoch}) is older than the one of a lease "
                f"this agent already executed for (epoch {self.last_epoch}): a stale remediator of a replaced bucket"
            )
        new_bucket = epoch is not None and (self.last_epoch is None or epoch > self.last_epoch)
        if not new_bucket and rev < self.last_revision:
            return (
                f"refused: lease revision {rev} is older than revision {self.last_revision} this agent already "
                "executed (a stale remediator lost its lease)"
            )
        if new_bucket or rev > self.last_revision:
            new_epoch = epoch if epoch is not None else self.last_epoch
            if self.fence_file is not None:
                try:
                    tmp = self.fence_file.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"lease_revision": rev, "lease_epoch": new_epoch}))
                    os.replace(tmp, self.fence_file)
                except OSError as exc:
                    # not kept, not raised: a restart would forget it and let the older lease's holder through
                    return _state_refusal(command, self.fence_file, exc, "a stale remediator could act after a restart")
            self.last_revision, self.last_epoch = rev, new_epoch
        return None

    async def execute(self, command: NodeCommand) -> NodeCommandResult:
        key = (command.action_id, command.dry_run)
        known = self._results.get(key)
        if known is not None:
            self._results.move_to_end(key)
            return await asyncio.shield(known)
        stored = self._stored.get(key)
        if stored is not None:  # executed by an earlier run of this agent: its result, nothing runs again
            self.replayed += 1
            return stored
        late = self._late(command)
        if late is not None:  # not remembered: a fresh request for the same action may still run it
            self.expired += 1
            return self._result(command, ok=False, detail=late)
        if command.node == self.node and command.cluster == self.cluster:
            refusal = self._fence(command)
            if refusal is not None:
                if refusal.startswith(_STATE_REFUSAL) or self._fence_broken is not None:
                    self.refused_state += 1
                else:
                    self.fenced += 1
                return self._result(command, ok=False, detail=refusal)
            refusal = self._begin(key, command)
            if refusal is not None:  # not remembered: once the volume is fixed the same action may run
                self.refused_state += 1
                return self._result(command, ok=False, detail=refusal)
        future: asyncio.Future[NodeCommandResult] = asyncio.get_running_loop().create_future()
        self._results[key] = future
        while len(self._results) > self.remember:
            self._results.popitem(last=False)
        try:
            result = await self._run(command)
        except asyncio.CancelledError:
            # the agent is stopping with this command under way (its stop waited as long as it could): what ran
            # is not known. Kept like any result, so the sender's second ask (for the result only) hears that,
            # not "not started"
            result = self._result(
                command,
                ok=False,
                detail=f"{command.command} interrupted: the agent stopped while it ran; its effect is unknown",
            )
            self._store(key, result)
            future.set_result(result)
            raise
        except Exception as exc:  # an unexpected failure is still an answer, never a dead agent
            log.exception("command failed", extra={"node": self.node, "action_id": command.action_id})
            result = self._result(command, ok=False, detail=f"{command.command} failed: {exc}")
        self._store(key, result)
        future.set_result(result)
        return result

    def deadline(self, command: NodeCommand) -> float | None:
        """When the command's work must end (this agent's clock): `REPLY_MARGIN_S` before the sender stops
        waiting (`expires_at`), or None when the request carries no `expires_at` (then only the agent's own
        timeouts bound it). A sender's clock ahead of ours gives the answer less margin; the sender's second ask
        for the result (`ASK_AGAIN_S`) covers what arrives late."""
        if command.expires_at is None:
            return None
        return command.expires_at.timestamp() - REPLY_MARGIN_S

    def _left(self, deadline: float | None, own_s: float) -> float:
        """Seconds this step may take: the agent's own timeout, or less when the request's deadline is nearer."""
        if deadline is None:
            return own_s
        return min(own_s, deadline - self.clock())

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
        if command.command != "ping" and not command.dry_run:
            deadline = self.deadline(command)
            if deadline is not None and deadline - self.clock() < MIN_WORK_S:
                return self._result(
                    command,
                    ok=False,
                    detail=f"refused: {command.command} not started: less than {MIN_WORK_S:g} s left before its "
                    f"sender stops waiting ({command.expires_at.isoformat() if command.expires_at else ''})",
                )
        self.executed += 1
        if command.command == "ping":
            return self._result(command, ok=True, detail="pong")
        if command.command == "restart_service":
            return await self._restart(command)
        return await self._clean(command)

    async def _restart_unit(self, unit: str, command: NodeCommand) -> tuple[bool, str]:
        """Restart a unit within the request's deadline: (ok, what happened)."""
        deadline = self.deadline(command)
        timeout_s = None if deadline is None else max(deadline - self.clock(), MIN_WORK_S)
        outcome = await self.systemd.restart(unit, timeout_s=timeout_s)
        return outcome.ok, outcome.detail

    def _allowed_service(self, service: str) -> bool:
        return service in self.services or unit_name(service) in {unit_name(s) for s in self.services}

    async def _restart(self, command: NodeCommand) -> NodeCommandResult:
        service = command.target or ""
        if service == FD_HOLDER_TARGET:
            return await self._restart_fd_holder(command)
        if not self._allowed_service(service):
            allowed = ", ".join(self.services) or "(none configured)"
            return self._result(
                command,
                ok=False,
                detail=f"refused: service {service!r} is not in the agent's service list ({allowed}); "
                "add it to NODEHEAL_AGENT_SERVICES to allow restarts",
            )
        if command.dry_run:
            return self._result(command, ok=True, detail=f"dry run: would restart {unit_name(service)}")
        ok, detail = await self._restart_unit(service, command)
        return self._result(command, ok=ok, detail=detail)

    async def _restart_fd_holder(self, command: NodeCommand) -> NodeCommandResult:
        files = self.files if self.files is not None else LocalHostFiles(self.host_root)
        holders = await asyncio.to_thread(top_fd_holders, files, limit=1)
        if not holders:
            return self._result(command, ok=False, detail="no process with open file descriptors could be read")
        top = holders[0]
        who = f"pid {top.pid} ({top.name}) holds {top.fds} file descriptors"
        if top.unit is None:
            return self._result(
                command, ok=False, detail=f"refused: {who} and is not a systemd service; not restartable here"
            )
        if not self._allowed_service(top.unit):
            allowed = ", ".join(self.services) or "(none configured)"
            return self._result(
                command,
                ok=False,
                detail=f"refused: {who} in {top.unit}, which is not in the agent's service list ({allowed})",
            )
        if command.dry_run:
            return self._result(command, ok=True, detail=f"dry run: {who}; would restart {top.unit}")
        ok, detail = await self._restart_unit(top.unit, command)
        return self._result(command, ok=ok, detail=f"{who}; {detail}")

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
        for protected in self._protected():
            if real == protected or real.startswith(protected + os.sep):
                msg = (
                    f"refused: clean_disk target {target!r} holds kernel crash evidence (kdump / pstore),"
                    " which is never deleted; the kernel team reads it"
                )
                raise RefusedError(msg)
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
        targets = [t.strip() for t in (command.target or "").split(",") if t.strip()]
        if not targets:
            targets = [""]
        freed_total = 0
        parts: list[str] = []
        deadline = None if command.dry_run else self.deadline(command)
        for target in targets:
            if deadline is not None and deadline - self.clock() < MIN_WORK_S:
                parts.append(f"{target or '(none)'}: not started: the request's deadline came")
                continue
            try:
                freed, detail = await self._clean_one(target, dry_run=command.dry_run, deadline=deadline)
            except Exception as exc:  # one target's failure is said; the others are still cleaned
                log.exception("clean_disk target failed", extra={"node": self.node, "target": target})
                freed, detail = None, f"{target or '(none)'}: {type(exc).__name__}: {exc}"
            freed_total += freed or 0
            parts.append(detail)
        detail = "; ".join(parts)
        if command.dry_run:
            return self._result(command, ok=True, detail=detail, freed=freed_total)
        if freed_total <= 0:
            return self._result(command, ok=False, detail=f"nothing was freed: {detail}", freed=0)
        return self._result(command, ok=True, detail=detail, freed=freed_total)

    async def _clean_one(self, target: str, *, dry_run: bool, deadline: float | None) -> tuple[int | None, str]:
        """(bytes freed or None, what happened) for one clean_disk target, ended by `deadline` (this agent's
        clock; None: the agent's own timeouts only)."""
        timeout_s = self._left(deadline, self.clean.command_timeout_s)
        if target == IMAGES_TARGET:
            return await self._run_freeing(
                list(self.clean.image_prune_command),
                self.clean.image_fs_path,
                dry_run=dry_run,
                what="image prune",
                timeout_s=timeout_s,
            )
        if target == JOURNAL_TARGET:
            return await self._run_freeing(
                list(self.clean.journal_vacuum_command),
                self.clean.journal_path,
                dry_run=dry_run,
                what="journal vacuum",
                timeout_s=timeout_s,
            )
        try:
            directory = self.resolve_clean_target(target)
        except RefusedError as exc:
            return None, str(exc)
        if not directory.is_dir():
            return None, f"clean_disk target {target!r} is not a directory"
        cutoff = self.clock() - self.clean.max_age_days * 86_400
        keep_newest = self._is_crash_dir(directory)
        ends_at = self.clock() + timeout_s
        removed, freed, errors, stopped = await asyncio.to_thread(
            _remove_old_files,
            directory,
            cutoff=cutoff,
            dry_run=dry_run,
            keep_newest=keep_newest,
            protected=self._protected(),
            out_of_time=lambda: self.clock() >= ends_at,
        )
        verb = "would delete" if dry_run else "deleted"
        detail = (
            f"{'dry run: ' if dry_run else ''}{verb} {removed} files older than "
            f"{self.clean.max_age_days:g} days under {target} ({freed} bytes)"
        )
        if stopped:
            detail += f"; stopped after {timeout_s:.0f} s (the request's deadline), the rest is left"
        if errors:
            detail += f"; {len(errors)} could not be removed, first: {errors[0]}"
        return freed, detail

    def _protected(self) -> tuple[str, ...]:
        """Real paths of the crash-evidence directories (never deleted, never entered)."""
        return tuple(os.path.realpath(self._host(os.path.normpath(p))) for p in self.clean.protected_dirs)

    def _is_crash_dir(self, directory: Path) -> bool:
        for k in self.clean.keep_newest_in:
            real = os.path.realpath(self._host(k))
            if str(directory) == real or str(directory).startswith(real + os.sep):
                return True
        return False

    async def _run_freeing(
        self, cmd: list[str], fs_host_path: str, *, dry_run: bool, what: str, timeout_s: float
    ) -> tuple[int | None, str]:
        """Run a configured cleanup command; the gain of free space on `fs_host_path` is what it freed."""
        if not cmd:
            return None, f"refused: no {what} command configured"
        if dry_run:
            return None, f"dry run: would run {' '.join(cmd)}"
        fs_path = self.statfs_path(fs_host_path) if self.statfs_path else str(self._host(fs_host_path))
        before = _free_bytes(self.statvfs, fs_path)
        try:
            code, out, err = await run_bounded(cmd, timeout_s=timeout_s)
        except OSError as exc:  # not installed in the agent's image (crictl), not executable: this target only
            return None, f"cannot run {cmd[0]} for the {what}: {exc.strerror or exc}"
        if code is None:
            return None, f"{' '.join(cmd)} did not finish in {timeout_s:.0f}s (killed)"
        after = _free_bytes(self.statvfs, fs_path)
        freed = max(after - before, 0) if before is not None and after is not None else None
        if code != 0:
            return None, f"{' '.join(cmd)} exited {code}: {err.decode(errors='replace')[:300]}"
        return freed, f"ran {' '.join(cmd)} ({freed or 0} bytes freed): {out.decode(errors='replace').strip()[:200]}"


_STATE_REFUSAL = "refused: not started: the agent cannot write "


def _state_refusal(command: NodeCommand, path: Path, exc: OSError, risk: str) -> str:
    return (
        f"{_STATE_REFUSAL}{path} ({exc.strerror or exc}); without it {risk}. "
        f"{command.command} did not run: make the agent's state directory ({path.parent}) writable and not full"
    )


def _interrupted(action_id: str, command: str, *, node: str) -> NodeCommandResult:
    """The answer for a command an earlier run of this agent began and never finished (killed mid-run)."""
    return NodeCommandResult(
        action_id=action_id,
        node=node,
        ok=False,
        detail=f"{command} interrupted: the agent stopped while it ran; its effect is unknown (not run again)",
    )


def _started_line(key: tuple[str, bool], command: str) -> str:
    return json.dumps({"action_id": key[0], "dry_run": key[1], "started": command}, separators=(",", ":")) + "\n"


def _result_line(key: tuple[str, bool], result: NodeCommandResult) -> str:
    body = {"action_id": key[0], "dry_run": key[1], "result": result.model_dump(mode="json")}
    return json.dumps(body, separators=(",", ":")) + "\n"


def _free_bytes(statvfs: StatVfs, path: str) -> int | None:
    try:
        st = statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _newest_entry(directory: Path) -> str | None:
    """The top-level entry (a dump file, or a dump directory) holding the most recent file. Judged by the
    files' own times: a directory's mtime changes whenever something in it is deleted."""
    newest: tuple[float, str] | None = None
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        latest: float | None = None
        try:
            if entry.is_dir(follow_symlinks=False):
                for dirpath, _dirs, files in os.walk(entry.path, followlinks=False):
                    for name in files:
                        with contextlib.suppress(OSError):
                            t = os.lstat(os.path.join(dirpath, name)).st_mtime
                            latest = t if latest is None else max(latest, t)
            else:
                latest = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if latest is not None and (newest is None or latest > newest[0]):
            newest = (latest, entry.path)
    return newest[1] if newest else None


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_DEPTH = 64


@dataclass
class _CleanTally:
    removed: int = 0
    freed: int = 0
    errors: list[str] = field(default_factory=list)
    stopped: bool = False
    """the walk stopped at the request's deadline (`out_of_time`)"""


def _identity(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _remove_old_files(
    directory: Path,
    *,
    cutoff: float,
    dry_run: bool,
    keep_newest: bool = False,
    protected: tuple[str, ...] = (),
    out_of_time: Callable[[], bool] | None = None,
) -> tuple[int, int, list[str], bool]:
    """Delete regular files with mtime before `cutoff` under `directory`: (files removed, bytes freed, errors,
    stopped at the deadline). `keep_newest`: the newest top-level entry (file or directory: the latest dump) is
    left alone, whatever its age. `protected` directories (kernel crash evidence) are never entered, nor other
    file systems mounted below the directory. `out_of_time` is asked before each entry: when it says so, the walk
    stops and says it stopped.

    Safe against a tree that changes under it (clean_disk runs as root in directories pods can write to): every
    directory is opened relative to its parent's open descriptor with `O_NOFOLLOW | O_DIRECTORY` and checked to be
    the directory that was listed, and every file is examined and unlinked relative to its directory's descriptor.
    A directory swapped for a symlink between the listing and the descent is not entered, and an unlink never
    resolves a path through a symlink (a path-based walk followed it out of the allow-list)."""
    tally = _CleanTally()
    kept = _identity(_newest_entry(directory)) if keep_newest else None
    fenced = {i for i in (_identity(p) for p in protected) if i is not None}
    try:
        top = os.open(directory, _DIR_FLAGS)
    except OSError as exc:
        return 0, 0, [f"{directory}: {exc.strerror}"], False
    try:
        root_dev = os.fstat(top).st_dev
        _clean_dir(
            top,
            str(directory),
            tally,
            cutoff=cutoff,
            dry_run=dry_run,
            root_dev=root_dev,
            skip={*fenced, *([kept] if kept else [])},
            out_of_time=out_of_time or (lambda: False),
            depth=0,
        )
    finally:
        os.close(top)
    return tally.removed, tally.freed, tally.errors, tally.stopped


def _clean_dir(
    fd: int,
    path: str,
    tally: _CleanTally,
    *,
    cutoff: float,
    dry_run: bool,
    root_dev: int,
    skip: set[tuple[int, int]],
    out_of_time: Callable[[], bool],
    depth: int,
) -> None:
    """One open directory of `_remove_old_files`: its old regular files, then its subdirectories (same file
    system, not skipped), each opened relative to `fd` without following symlinks."""
    try:
        with os.scandir(fd) as listing:
            names = sorted(entry.name for entry in listing)
    except OSError as exc:
        tally.errors.append(f"{path}: {exc.strerror}")
        return
    subdirs: list[tuple[str, tuple[int, int]]] = []
    for name in names:
        if out_of_time():
            tally.stopped = True
            return
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # gone meanwhile: nothing to do
                tally.errors.append(f"{os.path.join(path, name)}: {exc.strerror}")
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in skip:
            continue
        if stat.S_ISDIR(st.st_mode):
            if st.st_dev == root_dev:
                subdirs.append((name, ident))
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
            continue  # symlinks, sockets, devices and recent files are left alone
        if not dry_run:
            try:
                os.unlink(name, dir_fd=fd)
            except OSError as exc:
                tally.errors.append(f"{os.path.join(path, name)}: {exc.strerror}")
                continue
        tally.removed += 1
        tally.freed += st.st_blocks * 512 if st.st_blocks else st.st_size
    for name, ident in subdirs:
        sub_path = os.path.join(path, name)
        if depth >= _MAX_DEPTH:
            tally.errors.append(f"{sub_path}: deeper than {_MAX_DEPTH} levels, not entered")
            continue
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:  # ELOOP / ENOTDIR: replaced by a symlink or a file since it was listed
            tally.errors.append(f"{sub_path}: not entered: {exc.strerror}")
            continue
        try:
            opened = os.fstat(sub)
            if (opened.st_dev, opened.st_ino) != ident:
                tally.errors.append(f"{sub_path}: not entered: replaced since it was listed")
                continue
            _clean_dir(
                sub,
                sub_path,
                tally,
                cutoff=cutoff,
                dry_run=dry_run,
                root_dev=root_dev,
                skip=skip,
                out_of_time=out_of_time,
                depth=depth + 1,
            )
        finally:
            os.close(sub)
        if tally.stopped:
            return
