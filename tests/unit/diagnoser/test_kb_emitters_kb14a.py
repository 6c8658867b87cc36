"""Branch kb14a: round 16's service-side misses, written from their emitters (docs/diagnoser.md, emitter table, kb14a
rows).

Each wording is checked on a real line (kb-659, kb-660 and kb-669 are round-16 held-out excerpts read after round 16's
single measurement, spent for `kubelet_down` and `planned_shutdown_reboot`; or a public thread not in the corpus) or on
the emitter's format string instantiated (`fmt`: the literal parts are the emitter's, the names made up). The
look-alikes are what the same emitters print when the kubelet runs or was stopped on purpose, another component's exit,
an update operator counting reboots; real ones are in tests/data/kb/benign.txt (none from a thread of the corpus).
The round-16 excerpts read and left as misses are checked to stay so (docs/diagnoser.md, kb14a paragraph).
"""

from __future__ import annotations

import pytest

from nodeheal.diagnoser.kb import analyse, default_matcher
from tests.unit.diagnoser.kbdata import BENIGN, ROWS
from tests.unit.diagnoser.kbdata import real as _real

KUBELET = "kubelet_down"
RUNTIME = "container_runtime_down"
PLANNED = "planned_shutdown_reboot"
FATAL = "kubelet.fatal_exit"
TORCX = "ops.tectonic_torcx_reboot"
BLOCK = "kubelet.systemctl_status_failed"


# (line, class, rule (None: a rule of a higher class on the same line wins), origin)
CASES = [
    # kubernetes cmd/kubelet/app/server.go: Run()'s 'failed to run Kubelet: %v', then glog / klog.Fatal (1.10-1.20)
    (_real("kb-660", "] failed to run Kubelet: "), KUBELET, FATAL, "kb-660 (1.1x, F-level, Clear Linux)"),
    # the same F line in an older held-out excerpt, already kubelet_down by its systemd lines (round 9)
    (_real("kb-416", "] failed to run Kubelet: "), KUBELET, FATAL, "kb-416 (F-level, swap on)"),
    # 1.24+: RunE returns it to component-base cli.Run, klog.ErrorS(err, "command failed") then exit 1 (round 9)
    (
        _real("kb-417", '"command failed" err="failed to run Kubelet: '),
        KUBELET,
        FATAL,
        "kb-417 (1.24+, command failed)",
    ),
    (
        'E0101 00:00:00.000000    1234 server.go:302] "Failed to run kubelet" err="failed to run Kubelet: failed to '
        'create kubelet: open /var/lib/kubelet/pki/kubelet.crt: permission denied"',
        KUBELET,
        FATAL,
        "fmt 1.21-1.23 klog.ErrorS(err, 'Failed to run kubelet') then os.Exit(1)",
    ),
    # a cause with its own, higher class on the same line keeps it
    (
        'E0101 00:00:00.000000    1234 run.go:74] "command failed" err="failed to run Kubelet: validate service '
        'connection: validate CRI v1 runtime API for endpoint \\"unix:///run/containerd/containerd.sock\\": rpc error: '
        'code = Unavailable desc = connection error"',
        RUNTIME,
        None,
        "fmt 1.26+ CRI validation (runtime.cri_unreachable's wording)",
    ),
    (_real("kb-283", "] failed to run Kubelet: "), "too_many_open_files", None, "kb-283 (inotify_init)"),
    # coreos/tectonic-torcx internal/app.go Bootstrap(): the line before PID 1's isolate of reboot.target
    (_real("kb-669", "node updated, triggering reboot"), PLANNED, TORCX, "kb-669 (tectonic-torcx, journal via docker)"),
    (
        'time="2018-01-10T10:00:00Z" level=info msg="node updated, triggering reboot to apply changes"',
        PLANNED,
        TORCX,
        "fmt logrus text formatter in the container's own log",
    ),
]


@pytest.mark.parametrize(("line", "cls", "rule", "origin"), CASES, ids=[c[3] for c in CASES])
def test_emitter_wording_is_recognised(line: str, cls: str, rule: str | None, origin: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.cls == cls, (origin, line, finding)
    assert rule is None or finding.rule_id == rule, (origin, line, finding)


def test_the_spent_excerpts_are_classified_whole() -> None:
    expected = {"kb-659": BLOCK, "kb-660": FATAL, "kb-669": TORCX}
    for excerpt, rule in expected.items():
        row = ROWS[excerpt]
        assert row["split"] == "test" and row["round"] == 16
        found = analyse(row["lines"]).primary
        assert found is not None and found.cls == row["class"] and found.rule_id == rule, (excerpt, found)


@pytest.mark.parametrize(
    "line",
    [
        # another component's exit through the same component-base cli.Run (real: benign.txt, sample-scheduler-extender)
        'E0101 00:00:00.000000       1 run.go:74] "command failed" err="failed to load kubeconfig: no such file"',
        # a kube-scheduler / kube-proxy F line naming its own command, not the kubelet
        "F0101 00:00:00.000000       1 server.go:98] failed to run kube-proxy: unable to create proxier",
        # the kubelet's non-fatal start-up errors (kb-660's own earlier lines)
        _real("kb-660", "Unable to read config path"),
        # the kubelet quoted in prose: no klog header, no structured wrapper
        "And the kubelet said failed to run Kubelet: failed to create kubelet: the server could not find it",
        # tectonic-torcx's step before the reboot: a cleanup unit queued, nothing executed yet
        _real("kb-669", "docker change detected, cleaning datadir before reboot"),
        # 1.26+ CRI validation against a runtime without the CRI plugin: a configuration fault, left unclassified
        # (test_kb_emitters_runtime_shutdown.py); the kubelet's wrapper of it is not matched either
        'E0101 00:00:00.000000    1234 run.go:74] "command failed" err="failed to run Kubelet: validate service '
        'connection: validate CRI v1 runtime API for endpoint \\"unix:///run/containerd/containerd.sock\\": rpc error: '
        'code = Unimplemented desc = unknown service runtime.v1.RuntimeService"',
        # other tools' reboot announcements (kured's colon form is not its own wording: kbshut4)
        'time="2024-01-01T03:00:00Z" level=info msg="Triggering reboot for node: node-1"',
    ],
)
def test_emitter_look_alikes_are_not_these_rules(line: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is None or finding.rule_id not in {FATAL, TORCX}, (line, finding)


def test_the_benign_look_alikes_of_these_rules_are_no_finding() -> None:
    lines = [
        line
        for line in BENIGN
        if '"command failed"' in line
        or "rebooting nodes" in line
        or "rebooted nodes" in line
        or "kubelet.service" in line
    ]
    assert len(lines) >= 4
    for line in lines:
        assert default_matcher().match_line(line) is None, line


def test_the_bootstrappers_own_failure_vetoes_its_reboot_line() -> None:
    """cobra prints the error Bootstrap() returns: 'failed to reboot: …' (StartUnit refused) or 'reboot result: "…"'
    (the isolate job ended and init did not kill the process)."""
    line = _real("kb-669", "node updated, triggering reboot")
    for failure in (
        "Error: failed to reboot: Interactive authentication required.",
        'Error: reboot result: "canceled"',
    ):
        assert [f.rule_id for f in default_matcher().scan([line, failure]) if f.rule_id == TORCX] == []
    assert [f.rule_id for f in default_matcher().scan(ROWS["kb-669"]["lines"])] == [TORCX]


# `systemctl status kubelet` (systemctl print_status_info()): the kubelet unit's Active line under its own header
# https://github.com/kubernetes/kubeadm/issues/2499 (not in the corpus): after a reboot, the kubeadm unit crash-looping
KUBEADM_2499 = [
    "    systemctl status kubelet",
    "    ● kubelet.service - kubelet: The Kubernetes Node Agent",
    "         Loaded: loaded (/lib/systemd/system/kubelet.service; enabled; vendor preset: enabled)",
    "        Drop-In: /etc/systemd/system/kubelet.service.d",
    "                 └─10-kubeadm.conf",
    "         Active: activating (auto-restart) (Result: exit-code) since Wed 2021-06-02 18:47:22 CEST; 5s ago",
    "           Docs: https://kubernetes.io/docs/home/",
    "       Main PID: 7677 (code=exited, status=1/FAILURE)",
]
# https://github.com/kubernetes/minikube/issues/9461 (not in the corpus): the kubelet's process running
MINIKUBE_9461 = [
    "● kubelet.service - kubelet: The Kubernetes Node Agent",
    "     Loaded: loaded (/lib/systemd/system/kubelet.service; enabled; vendor preset: enabled)",
    "    Drop-In: /etc/systemd/system/kubelet.service.d",
    "             └─10-kubeadm.conf",
    "     Active: active (running) since Tue 2020-10-13 02:49:07 UTC; 16ms ago",
]
# https://github.com/apprenda/kismatic/issues/56 (not in the corpus): the kubelet stopped (inactive (dead))
KISMATIC_56 = [
    "● kubelet.service - Kubernetes Kubelet",
    "   Loaded: loaded (/etc/systemd/system/kubelet.service; enabled; vendor preset: enabled)",
    "   Active: inactive (dead) since Mon 2016-11-07 05:44:26 UTC; 758ms ago",
]


def _block(lines: list[str]) -> tuple[str | None, str | None, str | None]:
    found = [f for f in default_matcher().scan(lines) if f.rule_id == BLOCK]
    return (
        (found[0].cls, found[0].fields.get("service"), found[0].fields.get("result")) if found else (None, None, None)
    )


def test_kb_659_the_kubelet_unit_past_its_start_limit_is_kubelet_down() -> None:
    assert _block(ROWS["kb-659"]["lines"]) == (KUBELET, "kubelet", "start-limit")
    finding = next(f for f in default_matcher().scan(ROWS["kb-659"]["lines"]) if f.rule_id == BLOCK)
    assert "kubelet.service" in finding.line and "Active: failed" in finding.line  # names the unit to restart


def test_a_crash_looping_kubelet_unit_is_kubelet_down() -> None:
    assert _block(KUBEADM_2499) == (KUBELET, "kubelet", "exit-code")


def test_a_running_or_stopped_kubelet_unit_or_another_units_block_is_no_finding() -> None:
    assert _block(MINIKUBE_9461) == (None, None, None)
    assert _block(KISMATIC_56) == (None, None, None)
    active = ROWS["kb-659"]["lines"][2]
    assert default_matcher().match_line(active) is None  # match_line never applies a block
    assert _block([active]) == (None, None, None)
    # the runtime's failed block stays the runtime's; a kubelet header above it does not reach through it
    runtime = ROWS["kb-599"]["lines"]
    assert _block(ROWS["kb-659"]["lines"][:2] + runtime[1:]) == (None, None, None)
    assert analyse(runtime).primary is not None and analyse(runtime).primary.cls == RUNTIME  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("excerpt", "why"),
    [
        ("kb-657", "ContainerStatus / KillContainer DeadlineExceeded: the runtime slow on one pod, no PLEG line"),
        ("kb-663", "dockerd's per-container 'Failed to restore container … with containerd' (restore() skips it)"),
        ("kb-667", "zincati's wall is sent while finalization is postponed, before strategy checks that can hold it"),
        # (kb-668, pods with the kubelet's 1.20/1.21 'Shutdown' reason, is read since branch shut18, with the listing's
        # risk in docs/diagnoser.md: test_kb_emitters_shut18.py)
    ],
)
def test_the_round_16_excerpts_read_and_left_alone_stay_misses(excerpt: str, why: str) -> None:
    row = ROWS[excerpt]
    assert row["round"] == 16
    found = analyse(row["lines"]).primary
    assert found is None, (excerpt, why, found)
