"""Branch kb9: container-runtime and shutdown wordings written from their emitters (docs/diagnoser.md, emitter table).

Each wording is checked on a real corpus line where one exists (its excerpt named; kb-179 is an older held-out miss,
kb-493 / kb-498 / kb-506 are round 12's misses, read after round 12 was measured: those rounds are spent for these
classes), else on the emitter's format string instantiated (`fmt`: the literal parts are the emitter's, the numbers
and names made up). Every node-log wording must also pass the detector's pre-filter. The look-alikes are what the same
emitters print in normal operation; real ones are in tests/data/kb/benign.txt.
"""

from __future__ import annotations

import pytest

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import analyse, default_matcher
from tests.unit.diagnoser.kbdata import real as _real

RUNTIME = "container_runtime_down"
PLANNED = "planned_shutdown_reboot"

CASES = [
    # kubernetes pkg/kubelet: 1.0-1.1 syncLoop / updateRuntimeUp, 1.6+ updateRuntimeUp, runtime.go
    (_real("kb-506", "container runtime is not up").strip('"'), RUNTIME, "kb-506"),
    (
        "E1204 06:26:04.101331   29219 kubelet.go:2216] Container runtime sanity check failed after 5.0s, err: <nil>",
        RUNTIME,
        "fmt 1.1",
    ),
    (
        "E0101 00:00:00.000000    1234 kubelet.go:2129] Container runtime not ready: RuntimeReady=false "
        "reason:DockerDaemonNotReady message:docker: failed to get docker version: Cannot connect to the Docker daemon",
        RUNTIME,
        "fmt 1.1x",
    ),
    (
        'E0101 00:00:00.000000    1234 kubelet.go:2868] "Container runtime not ready" runtimeReady="RuntimeReady=false '
        'reason:ContainerdNotReady message:containerd is not ready"',
        RUNTIME,
        "fmt 1.2x structured",
    ),
    # the kubelet's CRI client: remote_runtime.go structured errors, the 1.26+ start-up validation, gRPC's transport
    (
        'E0101 00:00:00.000000    1234 remote_runtime.go:633] "Status from runtime service failed" err="rpc error: '
        'code = Unavailable desc = connection error"',
        RUNTIME,
        "fmt structured remote_runtime",
    ),
    (
        'E0101 00:00:00.000000    1234 run.go:74] "command failed" err="failed to run Kubelet: validate service connection: '
        'validate CRI v1 runtime API for endpoint \\"unix:///run/containerd/containerd.sock\\": rpc error: code = '
        'Unavailable desc = connection error"',
        RUNTIME,
        "fmt 1.26+",
    ),
    (
        "W0203 20:50:35.255961    3997 logging.go:55] [core] [Channel #1 SubChannel #2]grpc: addrConn.createTransport "
        'failed to connect to {Addr: "/var/run/crio/crio.sock", ServerName: "localhost", }. Err: connection error: des',
        RUNTIME,
        "fmt gRPC (a copy cut before the dial error)",
    ),
    # the daemons' own fatal exits: Go runtime throw, containerd main, dockerd start-up, logrus Fatal
    (_real("kb-179", "fatal error: acquirep"), RUNTIME, "kb-179"),
    (
        "Jan 01 00:00:00 node-1 containerd[1234]: containerd: failed to load TOML: /etc/containerd/config.toml",
        RUNTIME,
        "fmt containerd main",
    ),
    (
        "Jan 01 00:00:00 node-1 dockerd[1234]: failed to start daemon: error initializing graphdriver",
        RUNTIME,
        "fmt dockerd",
    ),
    (
        'Jan 01 00:00:00 node-1 dockerd[1234]: time="2017-01-01T00:00:00Z" level=fatal msg="Error starting daemon: '
        'error initializing graphdriver: driver not supported"',
        RUNTIME,
        "fmt dockerd logrus",
    ),
    (
        "Jan 01 00:00:00 node-1 crio[1234]: panic: runtime error: invalid memory address or nil pointer dereference",
        RUNTIME,
        "fmt Go panic",
    ),
    # systemd: PID 1's debug job log (transaction.c, job.c), logind's action messages, systemd-shutdown's comm
    (_real("kb-493", "from shutdown.target/start"), PLANNED, "kb-493"),
    (_real("kb-498", "from shutdown.target/start"), PLANNED, "kb-498"),
    ("Jan 01 00:00:00 node-1 systemd[1]: Installed new job reboot.target/start as 2104", PLANNED, "fmt job.c"),
    (
        "Jan 01 00:00:00 node-1 systemd[1]: Added job systemd-poweroff.service/start to transaction.",
        PLANNED,
        "fmt transaction.c",
    ),
    ("Jan 01 00:00:00 node-1 systemd-logind[633]: Rebooting...", PLANNED, "fmt logind-action.c"),
    ("Jan 01 00:00:00 node-1 systemd-logind[633]: Powering off...", PLANNED, "fmt logind-action.c (newer case)"),
    (
        "Jan 01 00:00:00 node-1 systemd-journald[339]: Received SIGTERM from PID 1 (systemd-shutdow).",
        PLANNED,
        "fmt journald",
    ),
    ("[  100.000000] systemd-shutdow: 13 output lines suppressed due to ratelimiting", PLANNED, "fmt printk ratelimit"),
    # branch kbshut: sysvinit's shutdown executing (shutdown.c shutdown()'s syslog line), mkinitcpio's shutdown-ramfs
    # unit (the scheduled-shutdown walls go to terminals, not node logs: test_kb_scheduled_shutdown.py)
    ("Jan  1 00:00:00 node-1 shutdown[2210]: shutting down for system halt", PLANNED, "fmt sysvinit syslog"),
    (_real("kb-408", "Finished Generate shutdown-ramfs."), PLANNED, "kb-408"),
    (_real("kb-408", "mkinitcpio-generate-shutdown-ramfs.service: "), PLANNED, "kb-408 unit"),
]


@pytest.mark.parametrize(("line", "cls", "origin"), CASES, ids=[f"{c[1]}:{c[2]}" for c in CASES])
def test_emitter_wording_is_recognised_and_passes_the_detector(line: str, cls: str, origin: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.cls == cls, (origin, line)
    assert classify_line(line) is not None, ("the detector's pre-filter drops it", line)


@pytest.mark.parametrize(
    "line",
    [
        # fmt: the network plugin is not ready, the runtime is (kubelet.go updateRuntimeUp's other branch)
        'E0101 00:00:00.000000    1234 kubelet.go:2874] "Container runtime network not ready" '
        'networkReady="NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"',
        "runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:docker: network plugin is not ready",
        # a runtime that answers but lacks the CRI plugin is a configuration fault, not a dead runtime
        'E0101 00:00:00.000000    1234 run.go:74] "command failed" err="failed to run Kubelet: validate service connection: '
        'validate CRI v1 runtime API for endpoint \\"unix:///run/containerd/containerd.sock\\": rpc error: code = '
        'Unimplemented desc = unknown service runtime.v1.RuntimeService"',
        # old containerd's logrus lines that start their message with 'containerd: '; a shim's panic (one container)
        'Jan 01 00:00:00 node-1 containerd[900]: time="2017-01-01T00:00:00Z" level=info msg="containerd: stopping GRPC server"',
        "Jan 01 00:00:00 node-1 containerd-shim[33]: panic: close of closed channel",
        'Jan 01 00:00:00 node-1 dockerd[1234]: time="2017-01-01T00:00:00Z" level=error msg="Handler for GET /v1.40/x returned error"',
        # PID 1's debug log of an ordinary restart; a user manager starting its own shutdown.target at logout
        "Jan 01 00:00:00 node-1 systemd[1]: Installed new job sshd.service/restart as 55",
        "Jan 01 00:00:00 node-1 systemd[1199]: Installed new job shutdown.target/start as 55",
        "Jan 01 00:00:00 node-1 systemd[1199]: Pulling in app.service/stop from shutdown.target/start",
        # logind suspending; journald restarted by PID 1 itself
        "Jan 01 00:00:00 node-1 systemd-logind[633]: Suspending...",
        # branch kbshut: sysvinit's single-user wall (runlevel 1, no shutdown); logind scheduling a suspend; a
        # scheduled shutdown cancelled (sysvinit's stopit(), logind); mkinitcpio building a kernel upgrade's image
        "The system is going DOWN to maintenance mode in 5 minutes!",
        "Jan 01 00:00:00 node-1 systemd-logind[633]: The system will suspend at Thu 2022-06-30 12:16:43 CEST!",
        "Shutdown cancelled.",
        "Jan 01 00:00:00 node-1 systemd-logind[633]: System shutdown has been cancelled",
        "==> Starting build: '6.12.1-arch1-1'",
        "  -> Running build hook: [base]",
        "Jan 01 00:00:00 node-1 systemd-journald[339]: Received SIGTERM from PID 1 (systemd).",
    ],
)
def test_emitter_look_alikes_are_not_findings(line: str) -> None:
    assert default_matcher().match_line(line) is None, line
    assert analyse([line]).primary is None, line
