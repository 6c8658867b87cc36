"""Branch kb10: container-runtime and divide-error wordings written from their emitters (docs/diagnoser.md, emitter
table).

Each wording is checked on a real line where one exists (a corpus excerpt named: kb-201, kb-392, kb-534, kb-537 and
kb-546 are held-out misses read after their rounds were measured, spent for these classes; or the public source that
shows it), else on the emitter's format string instantiated (`fmt`: the literal parts are the emitter's, the numbers
and names made up). Every wording must also pass the detector's pre-filter. The look-alikes are what the same emitters
print when the runtime is up or the kernel did not oops; real ones are in tests/data/kb/benign.txt.
"""

from __future__ import annotations

import pytest

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import analyse, default_matcher
from tests.unit.diagnoser.kbdata import real as _real

RUNTIME = "container_runtime_down"
DIVIDE = "kernel_oops_divide_error"

CASES = [
    # systemd socket.c: docker.socket's control process failing (status 216/GROUP: SocketGroup=docker, no such group)
    (_real("kb-201", "docker.socket: Control process exited"), RUNTIME, "kb-201 (systemd 225)"),
    (
        "Nov 21 07:29:56 kube-node-02 systemd[1]: docker.socket control process exited, code=exited status=216",
        RUNTIME,
        "moby/moby#18141 (systemd 208, CentOS 7)",
    ),
    (
        "Jan 01 00:00:00 node-1 systemd[1]: docker.socket: Control process exited, code=exited, status=216/GROUP",
        RUNTIME,
        "fmt systemd 236+",
    ),
    ("Jan 01 00:00:00 node-1 systemd[1]: docker.socket: Failed with result 'exit-code'.", RUNTIME, "fmt systemd 232+"),
    ("Jan 01 00:00:00 node-1 systemd[1]: Unit docker.socket entered failed state.", RUNTIME, "fmt systemd 219"),
    ("Jan 01 00:00:00 node-1 systemd[1]: docker.socket: Unit entered failed state.", RUNTIME, "fmt systemd 225"),
    # systemd service.c service_dispatch_timer: the runtime's start never completed
    (_real("kb-537", "docker.service operation timed out"), RUNTIME, "kb-537 (systemd 208, copy cut)"),
    (
        "Dez 06 11:39:08 demov3-node1 systemd[1]: docker.service operation timed out. Terminating.",
        RUNTIME,
        "CentOS 7.1 notes, systemd 208",
    ),
    (
        "Jan 01 00:00:00 node-1 systemd[1]: docker.service start operation timed out. Terminating.",
        RUNTIME,
        "fmt systemd 219",
    ),
    (
        "Jan 01 00:00:00 node-1 systemd[1]: containerd.service: start operation timed out. Terminating.",
        RUNTIME,
        "fmt systemd 229",
    ),
    (
        "Jan 01 00:00:00 node-1 systemd[1]: crio.service: Start-pre operation timed out. Terminating.",
        RUNTIME,
        "fmt systemd 24x",
    ),
    # kubelet pleg/generic.go relist and kubelet.go HandlePodCleanups getting no answer from the runtime
    (_real("kb-534", "GenericPLEG: Unable to retrieve pods"), RUNTIME, "kb-534 (kubelet 1.4, dockertools)"),
    (_real("kb-534", "Error listing containers: dockertools"), RUNTIME, "kb-534 (kubelet 1.4, %#v)"),
    (
        "E0101 00:00:00.000000    1234 generic.go:199] GenericPLEG: Unable to retrieve pods: rpc error: code = 2 "
        "desc = operation timeout: context deadline exceeded",
        RUNTIME,
        "fmt kubelet 1.6 glog, dockershim's operationTimeout behind CRI",
    ),
    (
        "E0101 00:00:00.000000    1234 generic.go:199] GenericPLEG: Unable to retrieve pods: rpc error: code = 4 "
        "desc = context deadline exceeded",
        RUNTIME,
        "fmt kubelet 1.6 glog, old gRPC numeric code",
    ),
    (
        'E0101 00:00:00.000000    1234 generic.go:205] "GenericPLEG: Unable to retrieve pods" err="rpc error: code = '
        'DeadlineExceeded desc = context deadline exceeded"',
        RUNTIME,
        "fmt kubelet 1.20+ structured",
    ),
    # the kernel's divide-error reports across versions and architectures
    (_real("kb-392", "divide error: 0000"), DIVIDE, "kb-392 (2.4 i386 die(), no counter)"),
    ("divide error: 0000 [1] SMP", DIVIDE, "LKML 2.6.16 x86_64 __die() '[%u]'"),
    ("divide error: 0000 [1] PREEMPT", DIVIDE, "LKML 2.6 x86_64 __die() '[%u]'"),
    ("Jan 11 18:12:27 lompa kernel: divide error: 0000 [#1]", DIVIDE, "LKML 2.6.14 i386 die() '[#%d]'"),
    ("[   17.292524] Oops: divide error: 0000 [#1] PREEMPT SMP NOPTI", DIVIDE, "fmt 6.9+ 'Oops: ' prefix"),
    (_real("kb-546", "Division by zero in kernel."), DIVIDE, "kb-546 (ARM __div0(), mail-quoted)"),
    ("[    3.176443] Division by zero in kernel.", DIVIDE, "linux-arm-kernel i.MX7ULP report"),
]


@pytest.mark.parametrize(("line", "cls", "origin"), CASES, ids=[f"{c[1]}:{c[2]}" for c in CASES])
def test_emitter_wording_is_recognised_and_passes_the_detector(line: str, cls: str, origin: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.cls == cls, (origin, line)
    assert classify_line(line) is not None, ("the detector's pre-filter drops it", line)


@pytest.mark.parametrize(
    "line",
    [
        # a second socket unit (docker-tcp.socket) failing while dockerd is up; a control process that succeeded
        "Jan 01 00:00:00 node-1 systemd[1]: docker-tcp.socket: Failed with result 'resources'.",
        "Jan 01 00:00:00 node-1 systemd[1]: docker.socket: Control process exited, code=exited status=0",
        # docker being stopped (a restart or a shutdown) too slowly is not a start that never completed
        "Jan 01 00:00:00 node-1 systemd[1]: docker.service: Stopping timed out. Terminating.",
        "Jan 01 00:00:00 node-1 systemd[1]: docker.service stopping timed out. Terminating.",
        # another service's start timing out
        "Jan 01 00:00:00 node-1 systemd[1]: firewalld.service start operation timed out. Terminating.",
        # one pod's kill or sync timing out (kb-534's own first line): one container, not the runtime
        _real("kb-534", "KillContainerError"),
        # the runtime answered, the list was too large for gRPC (many containers): a PLEG error with the runtime up
        'E0101 00:00:00.000000    1234 generic.go:205] "GenericPLEG: Unable to retrieve pods" err="rpc error: code = '
        'ResourceExhausted desc = grpc: received message larger than max (16779459 vs. 16777216)"',
        # the daemon answered with an error of its own (gRPC code Unknown without the client's deadline)
        "E0101 00:00:00.000000    1234 generic.go:199] GenericPLEG: Unable to retrieve pods: rpc error: code = Unknown "
        "desc = Error response from daemon: readlink /var/lib/docker/overlay2: invalid argument",
        # a user process's divide error (SIGFPE) and a commit message's prose
        "[ 4709.210137] traps: div[2500] trap divide error ip:400524 sp:7ffcd27fd630 error:0 in div[400000+1000]",
        "invalid link speed. So guard against it to ensure we don't perform a division by zero in kernel.",
    ],
)
def test_emitter_look_alikes_are_not_findings(line: str) -> None:
    assert default_matcher().match_line(line) is None, line
    assert analyse([line]).primary is None, line
