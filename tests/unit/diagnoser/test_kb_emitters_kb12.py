"""Branch kb12: container-runtime start failures and a fatal machine-check record, written from their emitters
(docs/diagnoser.md, emitter table, kb12 rows).

Each wording is checked on a real line where one exists (a corpus excerpt named: kb-559, kb-572, kb-574 and kb-585 are
round-14 misses read after round 14's single measurement, spent for these classes; or the public thread that shows
it), else on the emitter's format string instantiated (`fmt`: the literal parts are the emitter's, the numbers and
names made up). Node log lines (a journal's, a console's) must also pass the detector's pre-filter; `systemctl status`
output, systemctl's own message and a daemon's stderr on a terminal are not node log lines. The look-alikes are what
the same emitters print when the runtime is up or the machine check was not fatal; real ones are in
tests/data/kb/benign.txt.
"""

from __future__ import annotations

import pytest

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import analyse, default_matcher
from tests.unit.diagnoser.kbdata import ROWS
from tests.unit.diagnoser.kbdata import real as _real

RUNTIME = "container_runtime_down"
FATAL_MCE = "mce_fatal_panic"

# (line, class, origin, is a node log line)
CASES = [
    # moby 18.x libcontainerd/remote_daemon.go New(): errors.Wrap(err, "Failed to connect to containerd"), printed by
    # cmd/dockerd/docker.go main on stderr before exit 1
    (_real("kb-559", "Failed to connect to containerd"), RUNTIME, "kb-559 (docker 18.03 on a terminal)", False),
    (
        'Jan 01 00:00:00 node-1 dockerd[1234]: Failed to connect to containerd: failed to dial "/var/run/docker/'
        'containerd/docker-containerd.sock": context deadline exceeded',
        RUNTIME,
        "fmt moby 18.x under systemd",
        True,
    ),
    (
        "Jan 01 00:00:00 node-1 dockerd[1234]: Failed to connect to containerd: unable to get containerd version: "
        "rpc error: code = Unavailable desc = grpc: the connection is unavailable",
        RUNTIME,
        "fmt moby 18.x remote_daemon.go",
        True,
    ),
    # moby 19.03+ daemon/daemon.go NewDaemon 'failed to dial %q' under cmd/dockerd's 'failed to start daemon', bare
    (
        'failed to start daemon: failed to dial "/run/containerd/containerd.sock": context deadline exceeded',
        RUNTIME,
        "fmt moby 19.03+ on a terminal",
        False,
    ),
    # systemd's start limit for the runtime unit: 208 / 219 (service.c), later unit.c
    (
        "Feb 02 23:12:01 myserver-101.local systemd[1]: docker.service start request repeated too quickly, "
        "refusing to start.",
        RUNTIME,
        "garethr/garethr-docker#426 (systemd 208, CentOS 7)",
        True,
    ),
    (
        "Jul 23 17:17:44 worker4 systemd[1]: start request repeated too quickly for docker.service",
        RUNTIME,
        "fmt systemd 219 (CentOS 7.2+)",
        True,
    ),
    (
        "Jan 01 00:00:00 node-1 systemd[1]: containerd.service: Start request repeated too quickly.",
        RUNTIME,
        "fmt systemd 225+",
        True,
    ),
    ("Jan 01 00:00:00 node-1 systemd[1]: crio.service: Start request repeated too quickly.", RUNTIME, "fmt", True),
    (
        "Jan 01 00:00:00 node-1 systemd[1]: docker.service: Failed with result 'start-limit-hit'.",
        RUNTIME,
        "fmt systemd 232+ (runtime.systemd_failed)",
        True,
    ),
    # PID 1's start job result, job.c: 'Failed to start %s.' / 'Dependency failed for %s.' with the unit's Description
    (_real("kb-585", "Dependency failed for Docker"), RUNTIME, "kb-585 (Raspbian buster, a journal line)", True),
    (_real("kb-535", "Failed to start Docker"), RUNTIME, "kb-535 (round 13, already recognised)", True),
    (_real("kb-185", "Failed to start containerd container runtime"), RUNTIME, "kb-185 (train, zh_CN)", True),
    (
        "Jan 01 00:00:00 node-1 systemd[1]: Failed to start docker.service - Docker Application Container Engine.",
        RUNTIME,
        "fmt systemd 252+ (unit - description)",
        True,
    ),
    (
        "Jan 01 00:00:00 node-1 systemd[1]: Failed to start Container Runtime Interface for OCI (CRI-O).",
        RUNTIME,
        "fmt cri-o contrib/systemd/crio.service",
        True,
    ),
    (
        "Jan 01 00:00:00 node-1 systemd[1]: Failed to start Open Container Initiative Daemon.",
        RUNTIME,
        "fmt cri-o 1.x crio.service",
        True,
    ),
    # systemctl's own message for a JOB_DEPENDENCY result (a terminal, not a log line)
    (_real("kb-585", "A dependency job for docker.service failed"), RUNTIME, "kb-585 (apt's post-install)", False),
    # `systemctl status`: the ExecStart process of Container Linux's docker.service wrapper, exited
    (_real("kb-572", "ExecStart=/usr/lib/coreos/dockerd"), RUNTIME, "kb-572 (CoreOS 575, start-limit)", False),
    # print_mce() in the #MC handler with a bank status of VAL, EN and PCC: mce_panic() in every version
    (_real("kb-574", "Machine Check Exception"), FATAL_MCE, "kb-574 (2.6 x86_64, status f6…)", True),
    (_real("kb-164", "Machine Check Exception"), FATAL_MCE, "kb-164 (train, status b2…)", True),
    (
        "[   12.345678] mce: [Hardware Error]: CPU 3: Machine Check Exception: 5 Bank 1: b200000000070150",
        FATAL_MCE,
        "fmt mce/core.c __print_mce, MCIP",
        True,
    ),
]


@pytest.mark.parametrize(("line", "cls", "origin", "log_line"), CASES, ids=[c[2] for c in CASES])
def test_emitter_wording_is_recognised(line: str, cls: str, origin: str, log_line: bool) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.cls == cls, (origin, line)
    if log_line:
        assert classify_line(line) is not None, ("the detector's pre-filter drops it", line)


def test_the_spent_excerpts_are_classified_whole() -> None:
    for excerpt in ("kb-559", "kb-572", "kb-574", "kb-585"):
        row = ROWS[excerpt]
        assert row["split"] == "test" and row["round"] == 14
        assert analyse(row["lines"]).primary is not None
        assert analyse(row["lines"]).primary.cls == row["class"], excerpt  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "line",
    [
        # the runtime's start and stop jobs when it is up
        "Jan 01 00:00:00 node-1 systemd[1]: Started Docker Application Container Engine.",
        "Jan 01 00:00:00 node-1 systemd[1]: Starting Docker Application Container Engine...",
        "Jan 01 00:00:00 node-1 systemd[1]: Stopped Docker Application Container Engine.",
        "Jan 01 00:00:00 node-1 systemd[1]: Started containerd container runtime.",
        # other units: a GPU wrapper whose name ends in docker.service, a user's own service
        "Jan 01 00:00:00 node-1 systemd[1]: nvidia-docker.service: Start request repeated too quickly.",
        "Jan 01 00:00:00 node-1 systemd[1]: myapp.service: Start request repeated too quickly.",
        "Jan 01 00:00:00 node-1 systemd[1]: Failed to start My Docker Application Container Engine Backup.",
        # systemctl's message for a failed reload of a running dockerd is not matched ('Job for %s failed')
        'Job for docker.service failed because the control process exited with error code. See "systemctl status '
        'docker.service" and "journalctl -xe" for details.',
        # other tools' own 'failed to connect to containerd' (a logrus Fatal, a library error in lower case)
        'time="2024-01-01T00:00:00Z" level=fatal msg="Failed to connect to containerd" error="context deadline exceeded"',
        'error: failed to connect to containerd: failed to dial "/run/containerd/containerd.sock": context deadline',
        # another daemon's start failure, and a dial of a socket that is not containerd's
        "failed to start daemon: listen tcp :8080: bind: address already in use",
        'failed to start daemon: failed to dial "/run/buildkit/buildkitd.sock": context deadline exceeded',
        # a machine-check record without PCC (corrected: VAL only; uncorrected but recoverable: VAL|UC|EN, S/AR)
        "CPU 4: Machine Check Exception: 0 Bank 8: 8c00004000010091",
        "mce: [Hardware Error]: CPU 2: Machine Check Exception: 7 Bank 1: bd80000000100134",
        # a polled record (no ' Exception': MCIP clear) with PCC set is the leftover of a previous boot's check
        "mce: [Hardware Error]: CPU 0: Machine Check: 0 Bank 4: b200000000070f0f",
    ],
)
def test_emitter_look_alikes_are_not_this_class(line: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is None or finding.cls not in {RUNTIME, FATAL_MCE}, (line, finding)
