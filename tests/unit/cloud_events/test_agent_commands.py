"""Node-local commands: allow-lists, symlink escapes, dry run, idempotency — with a real `systemctl`
executable (a script in a temp dir) run as a subprocess."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nodeheal.agent import commands
from nodeheal.agent.commands import CleanPolicy, CommandExecutor
from nodeheal.agent.systemd import SystemctlClient
from nodeheal.schemas.commands import NodeCommand
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node


def _executor(node: FakeNode, *, allowed: tuple[str, ...] = ("/var/log/pods",)) -> CommandExecutor:
    return CommandExecutor(
        node="node-1",
        cluster="c1",
        host_root=node.root,
        services=("kubelet", "containerd"),
        systemd=SystemctlClient(command=[node.systemctl]),
        clean=CleanPolicy(allowed_dirs=allowed, max_age_days=7, image_prune_command=()),
    )


def _cmd(command: str, target: str | None, action_id: str, *, dry_run: bool = False) -> NodeCommand:
    return NodeCommand(
        cluster="c1", node="node-1", command=command, target=target, action_id=action_id, dry_run=dry_run
    )  # type: ignore[arg-type]


def _old_file(path: Path, size: int, *, age_days: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    then = time.time() - age_days * 86_400
    os.utime(path, (then, then))


async def test_systemctl_show_reads_states(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "failed", restarts=4)
    node.set_unit("containerd.service", "active")
    statuses = await SystemctlClient(command=[node.systemctl]).status(["kubelet", "containerd"])
    assert [(s.unit, s.state, s.restarts) for s in statuses] == [("kubelet", "failed", 4), ("containerd", "active", 0)]


async def test_restart_listed_service_once_per_action_id(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    executor = _executor(node)
    first = await executor.execute(_cmd("restart_service", "kubelet", "a1"))
    again = await executor.execute(_cmd("restart_service", "kubelet", "a1"))
    assert first.ok and first == again
    assert node.restarts_logged() == ["kubelet.service"]


async def test_restart_of_unlisted_service_is_refused(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    result = await _executor(node).execute(_cmd("restart_service", "sshd", "a2"))
    assert not result.ok
    assert "sshd" in result.detail and "not in the agent's service list" in result.detail
    assert node.restarts_logged() == []


async def test_failed_restart_reports_systemctl_error(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    (node.state / "kubelet.service.fail").write_text("")
    result = await _executor(node).execute(_cmd("restart_service", "kubelet", "a3"))
    assert not result.ok and "Job for kubelet.service failed" in result.detail


async def test_dry_run_restart_does_nothing(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    result = await _executor(node).execute(_cmd("restart_service", "kubelet", "a4", dry_run=True))
    assert result.ok and "dry run" in result.detail
    assert node.restarts_logged() == []


async def test_clean_disk_deletes_only_old_files_in_allowed_dir(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    pods = node.root / "var/log/pods"
    _old_file(pods / "ns_pod_uid/app/0.log", 10_000, age_days=30)
    _old_file(pods / "ns_pod_uid/app/1.log", 5_000, age_days=1)
    outside = node.root / "etc/important.conf"
    _old_file(outside, 100, age_days=30)
    os.symlink(outside, pods / "link-to-etc")
    executor = _executor(node)

    dry = await executor.execute(_cmd("clean_disk", "/var/log/pods", "c1", dry_run=True))
    assert dry.ok and dry.freed_bytes and dry.freed_bytes >= 10_000
    assert (pods / "ns_pod_uid/app/0.log").exists()

    result = await executor.execute(_cmd("clean_disk", "/var/log/pods", "c1"))
    assert result.ok and result.freed_bytes is not None and result.freed_bytes >= 10_000
    assert "deleted 1 files" in result.detail
    assert not (pods / "ns_pod_uid/app/0.log").exists()
    assert (pods / "ns_pod_uid/app/1.log").exists()
    assert outside.exists() and (pods / "link-to-etc").is_symlink()


async def test_clean_disk_refuses_root_outside_and_symlink_escapes(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    (node.root / "var/log/pods").mkdir(parents=True)
    (node.root / "etc").mkdir(exist_ok=True)
    os.symlink(node.root / "etc", node.root / "var/log/pods/escape")
    executor = _executor(node)
    cases = {
        "/": "never allowed",
        "/etc": "outside the allow-list",
        "/var/log/pods/../../../etc": "outside the allow-list",
        "/var/log/pods/escape": "symlink",
        "var/log/pods": "absolute",
        None: "needs a target",
    }
    for index, (target, reason) in enumerate(cases.items()):
        result = await executor.execute(_cmd("clean_disk", target, f"r{index}"))
        assert not result.ok, target
        assert reason in result.detail, (target, result.detail)


async def test_allow_list_entry_of_root_allows_nothing(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    result = await _executor(node, allowed=("/",)).execute(_cmd("clean_disk", "/etc", "x1"))
    assert not result.ok and "outside the allow-list" in result.detail


async def test_command_for_another_node_is_refused(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    other = NodeCommand(cluster="c1", node="node-2", command="ping", action_id="p1")
    result = await _executor(node).execute(other)
    assert not result.ok and "node-2" in result.detail


async def test_clean_disk_keeps_the_newest_core_dump_and_fails_when_nothing_was_freed(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    cores = node.root / "var/lib/systemd/coredump"
    _old_file(cores / "core.app.1000.aaaa.1.zst", 20_000, age_days=40)
    _old_file(cores / "core.app.1000.bbbb.2.zst", 30_000, age_days=30)  # the newest dump: kept
    executor = _executor(node, allowed=("/var/log/pods", "/var/lib/systemd/coredump"))
    result = await executor.execute(_cmd("clean_disk", "/var/lib/systemd/coredump,/var/log/pods", "k1"))
    assert result.ok and result.freed_bytes is not None and result.freed_bytes >= 20_000
    assert not (cores / "core.app.1000.aaaa.1.zst").exists()
    assert (cores / "core.app.1000.bbbb.2.zst").exists()
    # nothing old is left anywhere: the command fails (the ladder moves on) instead of claiming success
    again = await executor.execute(_cmd("clean_disk", "/var/lib/systemd/coredump,/var/log/pods", "k2"))
    assert not again.ok and again.freed_bytes == 0 and "nothing was freed" in again.detail
    assert (cores / "core.app.1000.bbbb.2.zst").exists()
    # the mount point the detector named is not something the agent cleans
    mount = await executor.execute(_cmd("clean_disk", "/", "k3"))
    assert not mount.ok and "never allowed" in mount.detail


async def test_clean_disk_never_deletes_kernel_crash_evidence(tmp_path: Path) -> None:
    """kdump dumps and pstore records of any age survive clean_disk, even when an operator put /var or
    /var/crash itself in the allow-list: a new crash bucket's evidence is what the kernel team reads."""
    node = make_fake_node(tmp_path)
    kdump = [node.root / f"var/crash/127.0.0.1-2026-0{m}-01-00:00:00/vmcore-dmesg.txt" for m in (1, 2, 3)]
    for path in kdump:
        _old_file(path, 50_000, age_days=90)
    pstore = node.root / "var/lib/systemd/pstore/dmesg-ramoops-0"
    _old_file(pstore, 8_000, age_days=90)
    garbage = node.root / "var/tmp/old.bin"
    _old_file(garbage, 4_000, age_days=90)
    executor = _executor(node, allowed=("/var", "/var/crash"))

    direct = await executor.execute(_cmd("clean_disk", "/var/crash", "e1"))
    assert not direct.ok and "crash evidence" in direct.detail
    inside = await executor.execute(_cmd("clean_disk", "/var/crash/127.0.0.1-2026-01-01-00:00:00", "e2"))
    assert not inside.ok and "crash evidence" in inside.detail
    parent = await executor.execute(_cmd("clean_disk", "/var", "e3"))
    assert parent.ok and "deleted 1 files" in parent.detail  # only the unrelated old file
    assert not garbage.exists()
    assert all(path.exists() for path in kdump) and pstore.exists()


def _fenced_executor(node: FakeNode, fence: Path) -> CommandExecutor:
    ex = _executor(node)
    return CommandExecutor(
        node=ex.node,
        cluster=ex.cluster,
        host_root=ex.host_root,
        services=ex.services,
        systemd=ex.systemd,
        clean=ex.clean,
        fence_file=fence,
    )


async def test_lease_fence_refuses_an_older_revision_and_survives_a_restart(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    fence = tmp_path / "lease-fence.json"

    def executor() -> CommandExecutor:
        return _fenced_executor(node, fence)

    first = executor()
    newer = _cmd("restart_service", "kubelet", "f1").model_copy(update={"lease_revision": 42})
    assert (await first.execute(newer)).ok
    restarted = executor()  # a new agent process: the fence comes back from the state directory
    stale = _cmd("restart_service", "kubelet", "f2").model_copy(update={"lease_revision": 41})
    refused = await restarted.execute(stale)
    assert not refused.ok and "older than revision 42" in refused.detail
    assert node.restarts_logged() == ["kubelet.service"]  # the stale holder's restart never ran
    assert (
        await restarted.execute(_cmd("restart_service", "kubelet", "f3").model_copy(update={"lease_revision": 43}))
    ).ok


async def test_fd_holder_restart_names_the_process_and_refuses_what_is_not_a_listed_service(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)

    def proc(pid: int, comm: str, fds: int, cgroup: str) -> None:
        base = node.root / "proc" / str(pid)
        (base / "fd").mkdir(parents=True)
        for i in range(fds):
            (base / "fd" / str(i)).write_text("")
        (base / "comm").write_text(comm + "\n")
        (base / "cgroup").write_text(cgroup + "\n")

    proc(100, "kubelet", 3, "0::/system.slice/kubelet.service")
    proc(200, "leaky-java", 40, "0::/system.slice/leaky.service")
    result = await _executor(node).execute(_cmd("restart_service", "fd-holder", "h1"))
    assert not result.ok
    assert "pid 200 (leaky-java) holds 40" in result.detail and "leaky.service" in result.detail
    assert node.restarts_logged() == []  # never a guessed kubelet restart
    proc(300, "containerd", 90, "0::/system.slice/containerd.service")
    result = await _executor(node).execute(_cmd("restart_service", "fd-holder", "h2"))
    assert result.ok and "pid 300 (containerd)" in result.detail
    assert node.restarts_logged() == ["containerd.service"]


async def test_results_survive_a_restart_so_a_resent_command_never_runs_twice(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    results = tmp_path / "state" / "command-results.jsonl"
    results.parent.mkdir()

    def executor(remember: int = 10_000) -> CommandExecutor:
        ex = _executor(node)
        ex.remember = remember
        ex.results_file = results
        ex.__post_init__()  # load what an earlier run stored
        return ex

    first = await executor().execute(_cmd("restart_service", "kubelet", "r1"))
    assert first.ok and node.restarts_logged() == ["kubelet.service"]
    restarted = executor()  # the agent process restarted
    again = await restarted.execute(_cmd("restart_service", "kubelet", "r1"))
    assert again == first and restarted.replayed == 1
    assert node.restarts_logged() == ["kubelet.service"]  # answered from the stored result, not run again
    dry = await restarted.execute(_cmd("restart_service", "kubelet", "r1", dry_run=True))
    assert dry.ok and "dry run" in dry.detail  # a dry run of the same id is its own command
    # bounded: compacted to the newest `remember` results; a torn last line (a crash mid-write) is ignored
    small = executor(remember=2)
    for i in range(6):
        await small.execute(_cmd("ping", None, f"p{i}"))
    with results.open("a") as f:
        f.write('{"action_id": "p9", "dry_')
    reloaded = executor(remember=2)
    assert len(results.read_text().splitlines()) <= 5
    assert (await reloaded.execute(_cmd("ping", None, "p5"))).ok and reloaded.replayed == 1
    assert reloaded.executed == 0
    await reloaded.execute(_cmd("ping", None, "p0"))  # forgotten (older than the bound): runs again
    assert reloaded.executed == 1


async def test_clean_disk_goes_on_when_the_image_prune_tool_is_missing(tmp_path: Path) -> None:
    """The shipped agent image has no `crictl` (docs/security.md, known gaps), and a disk-full diagnosis asks for
    `container-images,/var/log/pods,journal`. Before, the missing program raised out of the whole clean: the old
    pod logs were never deleted and the step failed, so the ladder went on to cordon, drain and reboot. Now the
    image target says it could not run and the other targets are cleaned."""
    node = make_fake_node(tmp_path)
    pods = node.root / "var/log/pods"
    _old_file(pods / "ns_pod_uid/app/0.log", 10_000, age_days=30)
    executor = CommandExecutor(
        node="node-1",
        cluster="c1",
        host_root=node.root,
        services=("kubelet",),
        systemd=SystemctlClient(command=[node.systemctl]),
        clean=CleanPolicy(
            allowed_dirs=("/var/log/pods",),
            max_age_days=7,
            image_prune_command=(str(tmp_path / "no-such-crictl"), "rmi", "--prune"),
        ),
    )
    result = await executor.execute(_cmd("clean_disk", "container-images,/var/log/pods", "c-missing"))
    assert result.ok and result.freed_bytes is not None and result.freed_bytes >= 10_000, result.detail
    assert "cannot run" in result.detail and "no-such-crictl" in result.detail
    assert not (pods / "ns_pod_uid/app/0.log").exists()


def test_a_directory_swapped_for_a_symlink_mid_clean_is_not_followed(tmp_path: Path, monkeypatch: Any) -> None:
    """clean_disk runs as root in a directory that pods can write to (hostPath). Between the listing of a directory
    and the clean's descent into one of its subdirectories, the subdirectory is replaced by a symlink to a directory
    outside the allow-list. Before, the walk went by path and followed it: an old file outside was deleted. Now each
    directory is opened relative to its parent without following symlinks and files are removed relative to that
    open directory, so the outside file stays."""
    allowed = tmp_path / "pods"
    outside = tmp_path / "etc"
    _old_file(allowed / "sub" / "old.log", 1_000, age_days=30)
    _old_file(outside / "victim.conf", 1_000, age_days=30)
    real_scandir = os.scandir
    calls = 0

    def racing_scandir(target: Any = ".") -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the walk is about to read the subdirectory it chose: swap it for a symlink now
            (allowed / "sub").rename(allowed / "moved")
            (allowed / "sub").symlink_to(outside, target_is_directory=True)
        return real_scandir(target)

    monkeypatch.setattr(os, "scandir", racing_scandir)
    removed, _freed, _errors, _stopped = commands._remove_old_files(allowed, cutoff=time.time() - 86_400, dry_run=False)
    monkeypatch.undo()
    assert calls >= 2
    assert (outside / "victim.conf").exists()
    assert removed <= 1


def _expiring(command: str, target: str, action_id: str, *, in_s: float) -> NodeCommand:
    expires = datetime.now(tz=UTC) + timedelta(seconds=in_s)
    return _cmd(command, target, action_id).model_copy(update={"expires_at": expires})


async def test_a_restart_longer_than_the_senders_wait_is_answered_before_it_stops_waiting(tmp_path: Path) -> None:
    """The remediator waits 60 s for a node command; the agent's own restart timeout is 120 s. Before, a restart that
    hung past the remediator's wait was answered after it had recorded the step as failed and gone to the next rung.
    Now the agent's wait ends `REPLY_MARGIN_S` before the request's `expires_at`, and its answer says that systemd
    may still complete the restart job."""
    node = make_fake_node(tmp_path)
    (node.state / "kubelet.service.slow").write_text("8")
    executor = CommandExecutor(
        node="node-1",
        cluster="c1",
        host_root=node.root,
        services=("kubelet",),
        systemd=SystemctlClient(command=[node.systemctl], restart_timeout_s=20),
        clean=CleanPolicy(allowed_dirs=(), image_prune_command=()),
    )
    command = _expiring("restart_service", "kubelet", "slow-1", in_s=4)
    result = await executor.execute(command)
    assert command.expires_at is not None
    assert datetime.now(tz=UTC) < command.expires_at, "answered after the sender stopped waiting"
    assert not result.ok
    assert "did not finish" in result.detail and "may still complete" in result.detail, result.detail


async def test_a_command_with_too_little_time_left_is_not_started(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    result = await _executor(node).execute(_expiring("restart_service", "kubelet", "late-1", in_s=2.5))
    assert not result.ok and "not started" in result.detail, result.detail
    assert node.restarts_logged() == []


async def test_a_slow_image_prune_is_stopped_at_the_requests_deadline_and_the_cleaned_logs_count(
    tmp_path: Path,
) -> None:
    """Each clean target had its own 300 s timeout, so `container-images,/var/log/pods,journal` could run 15 minutes
    while the remediator waited 60 s. Now the targets share the request's deadline: the prune is killed there, what
    was cleaned before it is answered, and a target with no time left is not started."""
    node = make_fake_node(tmp_path)
    pods = node.root / "var/log/pods"
    _old_file(pods / "ns_pod_uid/app/0.log", 10_000, age_days=30)
    executor = CommandExecutor(
        node="node-1",
        cluster="c1",
        host_root=node.root,
        services=(),
        systemd=SystemctlClient(command=[node.systemctl]),
        clean=CleanPolicy(
            allowed_dirs=("/var/log/pods",),
            max_age_days=7,
            image_prune_command=("sleep", "8"),
            journal_vacuum_command=("true",),
            command_timeout_s=20,
        ),
    )
    command = _expiring("clean_disk", "/var/log/pods,container-images,journal", "clean-slow", in_s=4)
    result = await executor.execute(command)
    assert command.expires_at is not None
    assert datetime.now(tz=UTC) < command.expires_at, "answered after the sender stopped waiting"
    assert result.ok and result.freed_bytes is not None and result.freed_bytes >= 10_000, result.detail
    assert "sleep 8 did not finish" in result.detail, result.detail
    assert "journal: not started" in result.detail, result.detail
    assert not (pods / "ns_pod_uid/app/0.log").exists()


def test_the_walk_stops_when_its_time_is_up_and_says_so(tmp_path: Path) -> None:
    allowed = tmp_path / "pods"
    for i in range(10):
        _old_file(allowed / f"d{i}" / "old.log", 100, age_days=30)
    asked = 0

    def out_of_time() -> bool:
        nonlocal asked
        asked += 1
        return asked > 4

    removed, _freed, _errors, stopped = commands._remove_old_files(
        allowed, cutoff=time.time() - 86_400, dry_run=False, out_of_time=out_of_time
    )
    assert stopped
    left = sum(1 for i in range(10) if (allowed / f"d{i}" / "old.log").exists())
    assert removed < 10 and left == 10 - removed


async def test_a_lease_bucket_created_anew_resets_the_fence(tmp_path: Path) -> None:
    """A disaster recovery rebuilds JetStream: the leases bucket is created anew and its revisions start again at 1.
    Before, every agent that had executed revision N refused every later command for good (`older than revision
    N`), and with its fence in the state directory no restart helped: the fleet's node-local repairs stopped. A
    command now carries its lease bucket's creation time (`lease_epoch`): a newer bucket starts a new fence, and a
    stale holder of the old bucket is still refused."""
    node = make_fake_node(tmp_path)
    fence = tmp_path / "lease-fence.json"

    def restart(action: str, *, epoch: int | None, revision: int) -> NodeCommand:
        return _cmd("restart_service", "kubelet", action).model_copy(
            update={"lease_epoch": epoch, "lease_revision": revision}
        )

    assert (await _fenced_executor(node, fence).execute(restart("e1", epoch=1_000, revision=5_000))).ok
    rebuilt = _fenced_executor(node, fence)  # the agent restarted meanwhile: its fence came back from disk
    after = await rebuilt.execute(restart("e2", epoch=2_000, revision=3))
    assert after.ok, after.detail
    older_in_new = await rebuilt.execute(restart("e3", epoch=2_000, revision=2))
    assert not older_in_new.ok and "older than revision 3" in older_in_new.detail, older_in_new.detail
    stale_bucket = await _fenced_executor(node, fence).execute(restart("e4", epoch=1_000, revision=6_000))
    assert not stale_bucket.ok and "lease bucket" in stale_bucket.detail, stale_bucket.detail
    assert node.restarts_logged() == ["kubelet.service", "kubelet.service"]


async def test_an_unwritable_state_directory_refuses_commands_instead_of_forgetting_them(tmp_path: Path) -> None:
    """The agent's state volume is read-only or full. Before, the agent logged a warning and ran the command
    anyway: the lease fence and the result were not kept, so after a restart a stale remediator's older lease
    was obeyed and a re-sent command ran again. Now a command that changes the node is not started, with the
    file and the fix named; pings and dry runs still answer."""
    node = make_fake_node(tmp_path)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the state directory should be")  # every write under it fails, also as root
    fenced = _fenced_executor(node, blocked / "lease-fence.json")
    leased = _cmd("restart_service", "kubelet", "w1").model_copy(update={"lease_revision": 7})
    refused = await fenced.execute(leased)
    assert not refused.ok and "cannot write" in refused.detail and "lease-fence.json" in refused.detail, refused
    assert "state directory" in refused.detail and fenced.refused_state == 1 and fenced.fenced == 0
    assert fenced.last_revision == 0  # not taken as executed either

    ex = _executor(node)
    ex.results_file = blocked / "command-results.jsonl"
    refused = await ex.execute(_cmd("clean_disk", "/var/log/pods", "w2"))
    assert not refused.ok and "command-results.jsonl" in refused.detail and ex.refused_state == 1, refused
    assert (await ex.execute(_cmd("ping", None, "w3"))).ok
    assert (await ex.execute(_cmd("restart_service", "kubelet", "w4", dry_run=True))).ok
    assert node.restarts_logged() == []  # nothing ran on the node


async def test_an_unreadable_kept_fence_refuses_leased_commands_until_an_operator_looks(tmp_path: Path) -> None:
    """A fence file that exists but cannot be parsed (disk corruption, an edited file) used to read as "no lease
    seen", so any older lease was obeyed. Now commands with a lease are refused with what to do; a missing file is
    still a fresh node."""
    node = make_fake_node(tmp_path)
    fence = tmp_path / "lease-fence.json"
    fence.write_text('{"lease_revision": ')
    refused = await _fenced_executor(node, fence).execute(
        _cmd("restart_service", "kubelet", "u1").model_copy(update={"lease_revision": 3})
    )
    assert not refused.ok and "cannot be read" in refused.detail and "delete the file" in refused.detail, refused
    assert node.restarts_logged() == []
    fence.unlink()  # the operator checked and removed it
    assert (
        await _fenced_executor(node, fence).execute(
            _cmd("restart_service", "kubelet", "u2").model_copy(update={"lease_revision": 3})
        )
    ).ok
    assert node.restarts_logged() == ["kubelet.service"]


def test_only_a_request_on_the_nodes_own_command_subject_is_a_command() -> None:
    """What a JetStream push consumer delivering on the command subject looks like is refused: the stored subject,
    a `$JS.ACK…` reply, or no reply at all."""
    from nodeheal.agent.reply import delivery_refusal

    own = "nodeheal.cmd.c1.n1"
    assert delivery_refusal(own, "_INBOX.remediator.abc.1", own=own) is None
    stored = delivery_refusal("nodeheal.anomaly.c1.n9", "$JS.ACK.ANOMALIES.x.1.5.5.1.0", own=own)
    assert stored is not None and "not published on this node's command subject" in stored
    assert delivery_refusal(own, "$JS.ACK.ANOMALIES.x.1.5.5.1.0", own=own) is not None
    assert delivery_refusal(own, "", own=own) is not None
    assert delivery_refusal(own, None, own=own) is not None
