"""The agent's host readers against a temporary directory that looks like a node."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodeheal.agent.host import HostReader, fs_usage, parse_cpu_list, parse_mounts
from nodeheal.agent.kmsg import KmsgReader, parse_record
from tests.unit.cloud_events.agent_fakenode import make_fake_node, statvfs_with


def test_reads_proc_files_of_a_fake_node(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    host = HostReader(root=node.root)
    load = host.load()
    assert load is not None
    assert (load.load1, load.load5, load.load15) == (1.5, 0.75, 0.25)
    handles = host.file_handles()
    assert handles is not None
    assert (handles.allocated, handles.max) == (4160, 9223372036854775807)
    assert host.boot_id() == "0f0e0d0c-1111-2222-3333-444455556666"
    assert host.uptime_s() == pytest.approx(12345.67)
    assert host.kernel_release() == "5.10.134-16.al8.x86_64"
    assert host.os_image() == "Alibaba Cloud Linux 3.2104 U10"
    assert host.cpu_count() == 64
    assert host.problems == []


def test_missing_files_are_reported_not_raised(tmp_path: Path) -> None:
    host = HostReader(root=tmp_path)
    assert host.load() is None
    assert host.file_handles() is None
    assert host.filesystems() == ()
    assert any("loadavg" in p for p in host.problems)


def test_filesystems_filtered_by_type_and_pod_mounts_excluded(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    host = HostReader(root=node.root, statvfs=statvfs_with({"/data": (97, 40)}))  # type: ignore[arg-type]
    by_mount = {fs.mount: fs for fs in host.filesystems()}
    assert set(by_mount) == {"/", "/var/lib/containerd", "/data"}
    assert by_mount["/data"].used_pct == 97.0
    assert by_mount["/data"].inodes_used_pct == 40.0
    assert by_mount["/data"].readonly is True
    assert by_mount["/data"].device == "/dev/nvme1n1"
    assert by_mount["/"].readonly is False


def test_configured_mount_points_win_over_types(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    host = HostReader(root=node.root, mount_points=("/run",))
    assert [fs.mount for fs in host.filesystems()] == ["/run"]


def test_file_system_markers_are_measured_instead_of_the_host_root(tmp_path: Path) -> None:
    """The DaemonSet does not mount the host's /: each reported file system is measured on an empty
    marker directory of that file system. Only marked points that are real mounts are reported."""
    node = make_fake_node(tmp_path)
    markers = {"/": tmp_path / "fs-root", "/var/lib/containerd": tmp_path / "fs-containerd"}
    markers_and_a_non_mount = {**{k: str(v) for k, v in markers.items()}, "/var/lib/kubelet": str(tmp_path / "x")}
    for marker in markers.values():
        marker.mkdir()
    seen: list[str] = []

    def statvfs(path: str) -> os.statvfs_result:
        seen.append(path)
        return os.statvfs(path)

    host = HostReader(root=node.root, statvfs=statvfs, fs_markers=markers_and_a_non_mount)
    by_mount = {fs.mount: fs for fs in host.filesystems()}
    assert set(by_mount) == {"/", "/var/lib/containerd"}  # /var/lib/kubelet is not a mount on this node
    assert by_mount["/var/lib/containerd"].device == "/dev/nvme0n1"
    assert sorted(seen) == sorted(str(m) for m in markers.values())
    assert host.problems == []


def test_usage_of_a_real_directory_matches_statvfs(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    used, inodes = fs_usage(st)
    expected = 100.0 * (st.f_blocks - st.f_bfree) / ((st.f_blocks - st.f_bfree) + st.f_bavail)
    assert used == pytest.approx(expected, abs=0.01)
    assert 0 <= inodes <= 100


def test_mount_table_escapes_and_cpu_lists() -> None:
    mounts = parse_mounts("/dev/sdb1 /mnt/with\\040space ext4 ro,nosuid 0 0\n")
    assert mounts[0].mount_point == "/mnt/with space"
    assert mounts[0].readonly
    assert parse_cpu_list("0-3,8-11\n") == 8
    assert parse_cpu_list("0\n") == 1


def test_kmsg_records_and_continuations() -> None:
    assert parse_record("6,1234,5678901,-;eth0: link up") == (1234, "eth0: link up")
    assert parse_record(" SUBSYSTEM=net") is None
    assert parse_record("garbage") is None


async def test_kmsg_lines_are_reported_once_and_bounded(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    state = tmp_path / "kmsg.json"
    state.write_text('{"boot_id": "b1", "seq": 0}')
    reader = KmsgReader(path=node.root / "dev/kmsg", state_file=state, boot_id="b1")
    node.kmsg("first", "second")
    batch = await reader.read_new(max_lines=10)
    assert batch.lines == ("first", "second")
    assert (await reader.read_new(max_lines=10)).lines == ()
    node.kmsg(*[f"line {i}" for i in range(7)])
    batch = await reader.read_new(max_lines=5)
    assert batch.lines == tuple(f"line {i}" for i in range(5))
    assert batch.dropped == 2
    reader.close()
    # a restart within the same boot continues after the last sequence number
    again = KmsgReader(path=node.root / "dev/kmsg", state_file=state, boot_id="b1")
    node.kmsg("after restart")
    assert (await again.read_new(max_lines=10)).lines == ("after restart",)
    again.close()
    # a new boot reads its buffer from the beginning
    rebooted = KmsgReader(path=node.root / "dev/kmsg", state_file=state, boot_id="b2")
    assert len((await rebooted.read_new(max_lines=200)).lines) == 10
    rebooted.close()


async def test_kmsg_first_start_skips_history(tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    node.kmsg("old history")
    reader = KmsgReader(path=node.root / "dev/kmsg", state_file=tmp_path / "fresh.json", boot_id="b1")
    assert (await reader.read_new(max_lines=10)).lines == ()
    node.kmsg("new")
    assert (await reader.read_new(max_lines=10)).lines == ("new",)
    reader.close()


async def test_a_new_boot_reports_its_kernel_and_a_remount_shows_at_once(tmp_path: Path) -> None:
    """The collector reads kernel release, OS image and CPUs once per boot and parses the mount table
    only when it changed: a kernel upgrade shows with the new boot, a read-only remount in the next probe."""
    from nodeheal.agent.probe import ProbeCollector, SequenceCounter
    from nodeheal.agent.systemd import SystemctlClient

    node = make_fake_node(tmp_path)
    collector = ProbeCollector(
        cluster="c",
        node="n1",
        host=HostReader(root=node.root, statvfs=statvfs_with({})),  # type: ignore[arg-type]
        systemd=SystemctlClient(command=(node.systemctl,)),
        services=(),
        kernel_log=None,
        max_kernel_lines=10,
        sequence=SequenceCounter(state_file=None),
    )
    first = await collector.collect()
    assert first.kernel_release == "5.10.134-16.al8.x86_64"
    mounts = node.root / "proc/1/mounts"
    mounts.write_text(mounts.read_text().replace("/dev/vda1 / ext4 rw", "/dev/vda1 / ext4 ro"))
    remounted = await collector.collect()
    assert {fs.mount: fs.readonly for fs in remounted.filesystems}["/"] is True
    node.write("/proc/sys/kernel/osrelease", "5.10.134-17.al8.x86_64\n")
    node.write("/proc/sys/kernel/random/boot_id", "99999999-1111-2222-3333-444455556666\n")
    rebooted = await collector.collect()
    assert rebooted.boot_id == "99999999-1111-2222-3333-444455556666"
    assert rebooted.kernel_release == "5.10.134-17.al8.x86_64"


async def test_unchanged_service_states_are_reused_and_a_change_shows_at_once() -> None:
    from nodeheal.agent.systemd import SystemctlClient

    states = {"kubelet": "active", "containerd": "active"}
    calls: list[list[str]] = []

    async def systemctl(argv: list[str], *, timeout_s: float) -> tuple[int, str, str]:
        del timeout_s
        calls.append(list(argv))
        blocks = [f"Id={u}\nActiveState={states[u.removesuffix('.service')]}\nNRestarts=0\n" for u in argv[4:]]
        return 0, "\n".join(blocks), ""

    client = SystemctlClient(runner=systemctl)
    first = await client.status(["kubelet", "containerd"])
    again = await client.status(["kubelet", "containerd"])
    assert [s.state for s in again] == ["active", "active"]
    assert again == first and again[0] is first[0]  # the same text: not parsed again
    states["kubelet"] = "failed"
    changed = await client.status(["kubelet", "containerd"])
    assert [s.state for s in changed] == ["failed", "active"]
    # other units asked: their own answer
    assert [s.unit for s in await client.status(["containerd"])] == ["containerd"]
    assert len(calls) == 4  # systemctl is still asked every time: only the parsing is skipped
