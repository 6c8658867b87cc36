"""Branch crd19: a container runtime daemon's Go crash printed bare (no journal tag), read from its frames
(docs/diagnoser.md, emitter table, crd19 row; runtime.go_crash_trace under `blocks:` in rules.yaml).

The header (`panic: …` / `fatal error: …`) is every Go program's; the block is found only when a frame of a package
only the daemon runs stands at most 20 lines under it with only trace lines between. Real traces: kb-700 (round 17,
`train`), and public threads not in the corpus, copied verbatim."""

from __future__ import annotations

import pytest

from nodeheal.diagnoser.kb import analyse, default_matcher
from tests.unit.diagnoser.kbdata import BENIGN, ROWS

RUNTIME = "container_runtime_down"
BLOCK = "runtime.go_crash_trace"

# https://github.com/containerd/containerd/issues/101 (not in the corpus): docker/containerd 0.x panicking on a
# Raspberry Pi when `ctr containers start` asks it to start a bundle; its supervisor's frame is the daemon's
CONTAINERD_101 = [
    "panic: runtime error: invalid memory address or nil pointer dereference",
    "[signal 0xb code=0x1 addr=0x0 pc=0x24c50c]",
    "",
    "goroutine 35 [running, locked to thread]:",
    "github.com/docker/containerd/linux.(*libcontainerRuntime).createCgroupConfig(0x109e6cb0, 0x109e3920, 0x5, "
    "0x10b060b0, 0x10a056e0, 0x7, 0x8, 0x1, 0x0, 0x0)",
    "\t/home/pi/src/github.com/docker/containerd/linux/linux.go:691 +0x61c",
    "github.com/docker/containerd/linux.(*libcontainerRuntime).createLibcontainerConfig(0x109e6cb0, 0x109e3920, 0x5, "
    "0x10a05180, 0x1f, 0x109f2b00, 0x10b060b0, 0x0, 0x0, 0x0)",
    "\t/home/pi/src/github.com/docker/containerd/linux/linux.go:585 +0xcec",
    "github.com/docker/containerd/linux.(*libcontainerRuntime).Create(0x109e6cb0, 0x109e3920, 0x5, 0x10a05180, 0x1f, "
    "0x0, 0x0, 0x0, 0x0, 0x109e9470, ...)",
    "\t/home/pi/src/github.com/docker/containerd/linux/linux.go:396 +0x210",
    "github.com/docker/containerd/supervisor.(*StartEvent).Handle(0x109e6cd8, 0x109f2a80, 0x0, 0x0)",
    "\t/home/pi/src/github.com/docker/containerd/supervisor/create.go:11 +0xc0",
]
# https://github.com/hyperhq/runv/pull/196 (not in the corpus): another project's daemon, the same header
RUNV_196 = [
    "panic: runtime error: index out of range",
    "",
    "goroutine 38 [running]:",
    "github.com/hyperhq/runv/hypervisor.stateRunning(0xc820284120, 0x7f64e419d218, 0xc820301360)",
    "\t/home/darcy/gocode/src/github.com/hyperhq/runv/hypervisor/vm_states.go:716 +0x1c08",
    "github.com/hyperhq/runv/hypervisor.(*VmContext).loop(0xc820284120)",
    "\t/home/darcy/gocode/src/github.com/hyperhq/runv/hypervisor/hypervisor.go:30 +0x4c1",
]
# https://github.com/kata-containers/tests/pull/2952 (not in the corpus): the `ctr` client's panic in a CI log,
# containerd's module path but its cmd/ctr frames (and a vendored package)
KATA_2952 = [
    "01:07:04 # panic: provided file is not a console",
    "01:07:04 # ",
    "01:07:04 # goroutine 1 [running]:",
    "01:07:04 # github.com/containerd/containerd/vendor/github.com/containerd/console.Current(...)",
    "01:07:04 # \t/tmp/cri-install-containerd.cOga/src/github.com/containerd/containerd/vendor/github.com/containerd/"
    "console/console.go:67",
    "01:07:04 # github.com/containerd/containerd/cmd/ctr/commands/run.glob..func1(0xc000135760, 0x0, 0x0)",
    "01:07:04 # \t/tmp/cri-install-containerd.cOga/src/github.com/containerd/containerd/cmd/ctr/commands/run/run.go:164 "
    "+0xffd",
]
# https://github.com/containerd/containerd/issues/744 (not in the corpus): 1.0-alpha's shim package, here run inside
# containerd (`no_shim = true`); a shim process runs the same package for one container, so it is not read
CONTAINERD_744 = [
    "panic: runtime error: invalid memory address or nil pointer dereference",
    "[signal SIGSEGV: segmentation violation code=0x1 addr=0x50 pc=0xc50c13]",
    "",
    "goroutine 110 [running]:",
    "github.com/containerd/containerd/linux/shim.(*initProcess).ContainerStatus(0x0, 0x1363e00, 0xc4204706c0, "
    "0x1363e00, 0xc4204706c0, 0xe31506, 0x4)",
    "\t/home/sjd/go/src/github.com/containerd/containerd/linux/shim/init.go:128 +0x83",
]


def _block(lines: list[str]) -> list[tuple[str, int, str | None]]:
    return [(f.cls, f.index, f.fields.get("service")) for f in default_matcher().scan(lines) if f.rule_id == BLOCK]


def test_kb_700_containerds_crash_in_its_cri_store_is_the_runtime_down() -> None:
    row = ROWS["kb-700"]
    assert (row["split"], row["round"], row["class"]) == ("train", 17, RUNTIME)
    found = analyse(row["lines"]).primary
    assert found is not None and (found.cls, found.rule_id) == (RUNTIME, BLOCK)
    frame = next(i for i, line in enumerate(row["lines"]) if line.startswith("github.com/containerd/"))
    assert found.index == frame  # the finding is on the daemon's frame, its text the header and the frame
    assert found.line.startswith("panic: runtime error:") and "pkg/cri/store/container.deepCopyOf" in found.line


def test_a_daemon_frame_under_inlined_frames_is_found() -> None:
    """docker/containerd 0.x: three frames of its runtime package before the supervisor's, ten lines under the header."""
    assert [(cls, index) for cls, index, _ in _block(CONTAINERD_101)] == [(RUNTIME, 10)]


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        (RUNV_196, "another daemon's frames under the same header"),
        (KATA_2952, "the ctr client's frames, behind a CI log's prefix"),
        (CONTAINERD_744, "the shim package's frames: a shim process runs them for one container"),
    ],
    ids=["runv", "ctr", "shim-package"],
)
def test_other_programs_traces_are_no_finding(lines: list[str], why: str) -> None:
    assert _block(lines) == [], why
    found = analyse(lines).primary
    assert found is None or found.cls != RUNTIME, (why, found)


def test_the_block_needs_the_header_and_only_trace_lines_between() -> None:
    row = ROWS["kb-700"]["lines"]
    start = next(i for i, line in enumerate(row) if line.startswith("panic: "))
    trace = row[start:]
    assert _block(trace) != []
    assert _block(trace[1:]) == []  # frames without the header: a goroutine dump (SIGUSR1, pprof), not a crash
    # a log line between the header and the frame ends the block (the frames belong to something else)
    assert _block([trace[0], ROWS["kb-700"]["lines"][1], *trace[1:]]) == []
    # more than 20 lines above the frame: out of reach
    assert _block([trace[0], *(["github.com/example/x.f(0x0)", "\t/src/x.go:1 +0x1"] * 10), *trace[1:]]) == []
    assert default_matcher().match_line(trace[0]) is None  # match_line never applies a block
    assert all(default_matcher().match_line(line) is None for line in trace)


def test_a_vendored_or_client_path_of_the_runtimes_module_is_not_the_daemon() -> None:
    header = ["panic: runtime error: invalid memory address or nil pointer dereference", "", "goroutine 1 [running]:"]
    for frame in (
        "github.com/docker/docker/client.(*Client).ContainerList(0xc000132000, {0x1, 0x2})",  # the docker CLI
        "k8s.io/kubernetes/vendor/github.com/docker/docker/daemon.(*Daemon).Foo(0x0)",  # vendored in another module
        "github.com/containerd/containerd/runtime/v2/runc.(*Container).Cgroup(0x50)",  # a v2 shim (#7468's frame)
        "github.com/containerd/containerd/cmd/containerd-shim/main.go.main()",  # the v1 shim's main
    ):
        assert _block([*header, frame]) == [], frame
    for frame in (
        "github.com/docker/docker/daemon.(*Daemon).restore(0xc420416000)",
        "github.com/moby/moby/v2/daemon/container.(*Container).CheckpointTo(0xc000180000)",
        "github.com/containerd/containerd/v2/internal/cri/server.(*criService).Run(0xc0003ba000)",
        "github.com/cri-o/cri-o/server.(*Server).restore(0xc000476000)",
        "github.com/containerd/containerd/cmd/containerd/command.App.func1(0xc0001c6000)",
    ):
        assert [c for c, _, _ in _block([*header, frame])] == [RUNTIME], frame


def test_the_benign_trace_lines_are_no_finding() -> None:
    lines = [line for line in BENIGN if "goroutine " in line or line.startswith(("panic: ", "github.com/"))]
    assert len(lines) >= 4
    assert all(default_matcher().match_line(line) is None for line in lines)
    assert _block(lines) == []


# https://github.com/containerd/containerd/issues/7468 (not in the corpus): a containerd-shim's own nil dereference,
# logged under containerd's journal tag (the shim inherited containerd's stderr; journald keeps the stream's tag)
CONTAINERD_7468 = [
    "ct 03 22:42:24 gpunode22 containerd[31501]: panic: runtime error: invalid memory address or nil pointer dereference",
    "ct 03 22:42:24 gpunode22 containerd[31501]: [signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x846859]",
    "ct 03 22:42:24 gpunode22 containerd[31501]: goroutine 40 [running]:",
    "ct 03 22:42:24 gpunode22 containerd[31501]: github.com/containerd/containerd/runtime/v2/runc.(*Container).Cgroup(0x50)",
    "ct 03 22:42:24 gpunode22 containerd[31501]:         /go/src/github.com/containerd/containerd/runtime/v2/runc/"
    "container.go:285 +0x39",
]
FATAL = "runtime.daemon_fatal"


def test_a_shims_crash_under_containerds_tag_is_not_the_runtime_down() -> None:
    """runtime.daemon_fatal reads `containerd[pid]: panic: `; a shim's frame after it (veto_after) drops it."""
    assert default_matcher().match_line(CONTAINERD_7468[0]).rule_id == FATAL  # type: ignore[union-attr]
    assert [f.rule_id for f in default_matcher().scan(CONTAINERD_7468[:3])] == [FATAL]  # frames not in the copy
    assert analyse(CONTAINERD_7468).primary is None
    # the daemon's own crash keeps its finding: the frame is the daemon's (the CRI plugin), or the shim's frame is above
    daemon_frame = CONTAINERD_7468[3].replace("runtime/v2/runc.(*Container).Cgroup", "pkg/cri/server.(*criService).Run")
    assert [f.rule_id for f in default_matcher().scan([*CONTAINERD_7468[:3], daemon_frame])] == [FATAL]
    above = default_matcher().scan([CONTAINERD_7468[3], *CONTAINERD_7468[:3]])
    assert {f.rule_id for f in above} == {FATAL} and 1 in {f.index for f in above}
    # kb-179 (containerd's own runtime throw, round 1) is unchanged
    found = analyse(ROWS["kb-179"]["lines"]).primary
    assert found is not None and (found.cls, found.rule_id) == (RUNTIME, FATAL)
