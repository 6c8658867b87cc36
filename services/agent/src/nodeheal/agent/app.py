"""The node agent process: publishes a `NodeProbe` every interval to PROBES and answers node-local
commands on `<prefix>.cmd.<cluster>.<node>` (core NATS request/reply, this node's subject only).

It never dies because NATS is away (probes wait in a bounded outbox) or because a request is bad
(an error reply and a DLQ entry)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

import prometheus_client
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from nodeheal.agent.commands import CleanPolicy, CommandExecutor
from nodeheal.agent.crash import CrashCollector, crash_msg_id
from nodeheal.agent.host import HostReader, StatVfs
from nodeheal.agent.kmsg import JournalKernelLog, KernelLogSource, KmsgReader
from nodeheal.agent.probe import Outbox, ProbeCollector, SequenceCounter, full_every_for
from nodeheal.agent.reply import answer, connection_epoch, delivery_refusal
from nodeheal.agent.settings import AgentSettings
from nodeheal.agent.systemd import SystemctlClient, Systemd
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import dead_letter, publish_model
from nodeheal.schemas.commands import NodeCommand, NodeCommandResult
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.subjects import cmd_subject, crash_subject, probe_subject

log = logging.getLogger("nodeheal.agent")

PROBES_PUBLISHED = prometheus_client.Counter("nodeheal_agent_probes_published", "Probes acknowledged by PROBES")
PROBES_DROPPED = prometheus_client.Counter(
    "nodeheal_agent_probes_dropped", "Probes dropped because the outbox was full"
)
PUBLISH_FAILURES = prometheus_client.Counter("nodeheal_agent_publish_failures", "Failed probe publishes (retried)")
COMMANDS = prometheus_client.Counter("nodeheal_agent_commands", "Commands answered", ["command", "ok"])
REJECTED = prometheus_client.Counter("nodeheal_agent_commands_rejected", "Malformed command requests (DLQ)")
REFUSED_DELIVERIES = prometheus_client.Counter(
    "nodeheal_agent_command_deliveries_refused",
    "Messages on the command subject that were not command requests (a stream's push consumer): not run, DLQ",
)
OUTBOX = prometheus_client.Gauge("nodeheal_agent_outbox", "Probes waiting to be published")
STATE_REFUSED = prometheus_client.Counter(
    "nodeheal_agent_commands_refused_state",
    "Commands not started because the state directory could not keep their record or the lease fence",
)
CRASH_REPORTS = prometheus_client.Counter("nodeheal_agent_crash_reports", "Crash reports acknowledged by CRASHES")


class NodeAgent:
    def __init__(
        self, settings: AgentSettings, *, systemd: Systemd | None = None, statvfs: StatVfs | None = None
    ) -> None:
        self.settings = settings
        self.prefix = settings.nats.prefix
        self.systemd = systemd or SystemctlClient(command=settings.systemctl_command)
        state_dir = settings.state_dir
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(state_dir, os.W_OK):
                log.error(
                    "the state directory is not writable: commands that change the node will be refused",
                    extra={"state_dir": str(state_dir)},
                )
        self.host = HostReader(
            root=settings.host_root,
            mounts_file=settings.mounts_file,
            mount_points=tuple(settings.mount_points),
            fs_types=tuple(settings.fs_types),
            excluded_prefixes=tuple(settings.excluded_mount_prefixes),
            fs_markers=dict(settings.fs_markers),
        )
        if statvfs is not None:
            self.host.statvfs = statvfs
        services = tuple(settings.services)
        self.collector = ProbeCollector(
            cluster=settings.cluster,
            node=settings.node_name,
            host=self.host,
            systemd=self.systemd,
            services=services,
            kernel_log=self._kernel_log(state_dir),
            max_kernel_lines=settings.max_kernel_lines,
            sequence=SequenceCounter(state_file=state_dir / "probe-seq.json" if state_dir else None),
            full_every=full_every_for(settings.interval_s, settings.full_every),
        )
        self.executor = CommandExecutor(
            node=settings.node_name,
            cluster=settings.cluster,
            host_root=settings.host_root,
            services=services,
            systemd=self.systemd,
            clean=CleanPolicy(
                allowed_dirs=tuple(settings.clean.allowed_dirs),
                max_age_days=settings.clean.max_age_days,
                image_prune_command=tuple(settings.clean.image_prune_command),
                image_fs_path=settings.clean.image_fs_path,
                command_timeout_s=settings.clean.command_timeout_s,
                journal_vacuum_command=tuple(settings.clean.journal_vacuum_command),
                journal_path=settings.clean.journal_path,
                keep_newest_in=tuple(settings.clean.keep_newest_in),
                protected_dirs=tuple(settings.clean.protected_dirs),
            ),
            statvfs=self.host.statvfs,
            statfs_path=self.host.statfs_path,
            remember=settings.command_remember,
            # the lease fence survives an agent restart when there is a state directory
            fence_file=state_dir / "lease-fence.json" if state_dir else None,
            # so do the executed commands' results: a command re-sent after a restart is answered, not re-run
            results_file=state_dir / "command-results.jsonl" if state_dir else None,
        )
        self.crash = self._crash_collector(state_dir)
        self.outbox = Outbox(capacity=settings.outbox_max)
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.probes_sent = 0

    def _kernel_log(self, state_dir: Path | None) -> KernelLogSource | None:
        s = self.settings
        if s.kernel_log == "off":
            return None
        if s.kernel_log == "journal":
            return JournalKernelLog(
                command=s.journalctl_command, state_file=state_dir / "journal-cursor" if state_dir else None
            )
        return KmsgReader(
            path=self.host.path(s.kmsg_path),
            state_file=state_dir / "kmsg-position.json" if state_dir else None,
            boot_id=self.host.boot_id(),
        )

    def _crash_collector(self, state_dir: Path | None) -> CrashCollector | None:
        c = self.settings.crash
        if not c.enabled:
            return None
        return CrashCollector(
            cluster=self.settings.cluster,
            node=self.settings.node_name,
            root=self.settings.host_root,
            state_file=state_dir / "crash-state.json" if state_dir else None,
            pstore_dirs=c.pstore_dirs,
            kdump_dirs=c.kdump_dirs,
            journal_command=self.settings.journalctl_command if c.journal else None,
            max_lines=c.max_lines,
            max_bytes=c.max_bytes,
            lookback_s=c.lookback_days * 86_400.0,
        )

    @property
    def probe_subject(self) -> str:
        return probe_subject(self.settings.cluster, self.settings.node_name, prefix=self.prefix)

    @property
    def cmd_subject(self) -> str:
        return cmd_subject(self.settings.cluster, self.settings.node_name, prefix=self.prefix)

    async def start(self) -> None:
        nats_settings = self.settings.nats.model_copy(update={"inbox_prefix": self.settings.nats_inbox_prefix()})
        self.nc = await connect(nats_settings, name=f"nodeheal-agent-{self.settings.node_name}")
        self.js = self.nc.jetstream()
        self._sub = await self.nc.subscribe(self.cmd_subject, cb=self._on_command)
        # started means answering: the server has registered the command subscription before start returns
        # (a request sent right after would otherwise meet "no responders")
        await self.nc.flush(timeout=10)
        log.info("agent started", extra={"node": self.settings.node_name, "commands": self.cmd_subject})

    async def stop(self) -> None:
        self._stopping.set()
        if self.crash is not None:
            self.crash.mark_orderly()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        await self._finish_commands()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.collector.kernel_log is not None:
            self.collector.kernel_log.close()

    async def _finish_commands(self) -> None:
        """Let the commands under way finish and answer (they end by their requests' deadlines), for at most
        `stop_grace_s`. Before, each was given 5 s and then cancelled: a restart that went on ran, but its result
        was never answered nor kept, so the sender's second ask heard "not started" and the ladder moved on. What
        is still running after the grace is cancelled and kept as interrupted (its effect unknown)."""
        pending = {t for t in self._tasks if not t.done()}
        if not pending:
            return
        log.info(
            "stopping: waiting for the commands under way",
            extra={"node": self.settings.node_name, "commands": len(pending), "grace_s": self.settings.stop_grace_s},
        )
        _done, late = await asyncio.wait(pending, timeout=self.settings.stop_grace_s)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(BaseException):
                await task
        if late:
            log.warning(
                "stopped with commands under way; kept as interrupted",
                extra={"node": self.settings.node_name, "commands": len(late)},
            )

    async def ready(self) -> tuple[bool, str]:
        if self.nc is None or not self.nc.is_connected:
            return False, "agent: not connected to NATS"
        return True, "ok"

    # -- probes ------------------------------------------------------------------------------

    async def probe_once(self) -> None:
        """Collect one probe and try to publish everything in the outbox."""
        probe = await self.collector.collect()
        before = self.outbox.dropped
        self.outbox.add(probe)
        if self.outbox.dropped > before:
            PROBES_DROPPED.inc(self.outbox.dropped - before)
            log.warning(
                "outbox full, dropped the oldest probe", extra={"node": probe.node, "dropped": self.outbox.dropped}
            )
        await self.flush()
        if self.crash is not None:
            await self.report_crash(probe)

    async def report_crash(self, probe: NodeProbe) -> None:
        """On the first probe of a boot that follows a crash: the previous boot's evidence, once."""
        assert self.crash is not None
        assert self.js is not None
        report = await self.crash.check(
            boot_id=probe.boot_id, kernel_release=probe.kernel_release, os_image=probe.os_image, uptime_s=probe.uptime_s
        )
        if self.crash.problems:
            log.warning("crash evidence incomplete", extra={"node": probe.node, "problems": list(self.crash.problems)})
        if report is None:
            return
        subject = crash_subject(report.cluster, report.node, prefix=self.prefix)
        try:
            await publish_model(
                self.js,
                subject,
                report,
                msg_id=crash_msg_id(cluster=report.cluster, node=report.node, boot_id=report.boot_id),
                timeout_s=self.settings.nats.publish_timeout_s,
            )
        except Exception as exc:
            PUBLISH_FAILURES.inc()
            log.warning(
                "crash report not published, retried next probe", extra={"node": probe.node, "error": repr(exc)}
            )
            return
        self.crash.reported(report)
        CRASH_REPORTS.inc()
        log.warning(
            "crash report sent",
            extra={
                "node": probe.node,
                "previous_boot_id": report.previous_boot_id,
                "unexpected": report.unexpected,
                "sources": [e.path for e in report.evidence],
            },
        )

    async def flush(self) -> None:
        assert self.js is not None
        while self.outbox.pending:
            probe = self.outbox.pending[0]
            try:
                # No `Nats-Msg-Id`: the stream keeps no dedupe entry per probe (tens of thousands a second
                # at fleet scale). A re-send after an ambiguous timeout may be stored twice, one right after
                # the other; the detector counts a probe with the id of the node's last one once.
                await self.js.publish(self.probe_subject, probe.to_json(), timeout=self.settings.nats.publish_timeout_s)
            except Exception as exc:
                PUBLISH_FAILURES.inc()
                log.warning(
                    "probe not published, kept for later",
                    extra={"node": probe.node, "seq": probe.seq, "waiting": len(self.outbox), "error": repr(exc)},
                )
                break
            self.outbox.pending.popleft()
            self.probes_sent += 1
            PROBES_PUBLISHED.inc()
        OUTBOX.set(len(self.outbox))

    async def run_probes(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self._stopping.is_set():
            try:
                await self.probe_once()
            except Exception:
                log.exception("probe round failed", extra={"node": self.settings.node_name})
            next_at += self.settings.interval_s
            delay = next_at - loop.time()
            if delay < 0:  # we fell behind: do not burst to catch up
                next_at, delay = loop.time(), 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    # -- commands ----------------------------------------------------------------------------

    async def _on_command(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        assert self.nc is not None
        epoch = connection_epoch(self.nc)
        refusal = delivery_refusal(msg.subject, msg.reply, own=self.cmd_subject)
        if refusal is not None:
            await self._refuse_delivery(msg, refusal)
            return
        try:
            command = NodeCommand.model_validate_json(msg.data)
        except ValidationError as exc:
            await self._reject(msg, reason=_validation_reason(exc))
            return
        log.info(
            "command received",
            extra={"node": self.settings.node_name, "action_id": command.action_id, "command": command.command},
        )
        refused_before = self.executor.refused_state
        result = await self.executor.execute(command)
        if self.executor.refused_state > refused_before:
            STATE_REFUSED.inc(self.executor.refused_state - refused_before)
            log.error("command refused: the state directory cannot keep it", extra={"detail": result.detail})
        # the remediator verifies a repair on a full probe newer than the action: the next one is full
        self.collector.want_full("node command")
        COMMANDS.labels(command=command.command, ok=str(result.ok).lower()).inc()
        log.info(
            "command answered",
            extra={
                "node": self.settings.node_name,
                "action_id": command.action_id,
                "ok": result.ok,
                "detail": result.detail,
            },
        )
        await answer(msg, result.to_json(), nc=self.nc, epoch=epoch, node=self.settings.node_name)

    async def _refuse_delivery(self, msg: Msg, reason: str) -> None:
        """A message on the command subscription that is not a command request: not run, not answered (its reply,
        if any, is a JetStream ack subject, not a requester), dead-lettered with the reason."""
        REFUSED_DELIVERIES.inc()
        log.warning("message on the command subject refused", extra={"node": self.settings.node_name, "reason": reason})
        if self.js is not None:
            try:
                await dead_letter(
                    self.js,
                    service=self.settings.dlq_service,
                    reason=reason,
                    raw=msg.data,
                    subject=msg.subject,
                    headers=dict(msg.headers) if msg.headers else None,
                    prefix=self.prefix,
                )
            except Exception as exc:
                log.error("could not dead-letter a refused delivery", extra={"error": repr(exc)})

    async def _reject(self, msg: Msg, *, reason: str) -> None:
        REJECTED.inc()
        action_id = ""
        with contextlib.suppress(Exception):
            raw = json.loads(msg.data)
            if isinstance(raw, dict) and isinstance(raw.get("action_id"), str):
                action_id = raw["action_id"]
        detail = f"malformed command: {reason}; send a nodeheal.cmd/v1 NodeCommand"
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(
                    NodeCommandResult(
                        action_id=action_id, node=self.settings.node_name, ok=False, detail=detail
                    ).to_json()
                )
        if self.js is not None:
            try:
                await dead_letter(
                    self.js,
                    service=self.settings.dlq_service,
                    reason=detail,
                    raw=msg.data,
                    subject=msg.subject,
                    prefix=self.prefix,
                )
            except Exception as exc:
                log.error("could not dead-letter a malformed command", extra={"error": repr(exc)})


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(body)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
