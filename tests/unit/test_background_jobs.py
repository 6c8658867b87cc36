"""tests/support/background.py under pytest-xdist: processes given one shared directory run each job once
(the others wait for its result), and a job whose runner stops before it finished is run by whoever needs
it. Each process here stands for one xdist worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import sys, time
from pathlib import Path
from tests.support import background

shared, runs, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
background.share(shared)

def work():
    with runs.open("a") as fh:
        fh.write("ran\\n")
    done = background.run([sys.executable, "-c", "import time; time.sleep(float(__import__('sys').argv[1])); print('built')", sys.argv[4]], timeout=60)
    return done.stdout.strip()

JOB = background.job(str(shared / "test_module.py"), "the work", work)
JOB.start()
if mode == "quit":  # the session of this worker ends before the job is done: its commands are killed
    time.sleep(0.5)
    background.stop_jobs()
    print("quit")
else:
    print(JOB.result())
    background.stop_jobs()
"""


def _worker(shared: Path, runs: Path, mode: str, seconds: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(shared), str(runs), mode, seconds],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_workers_run_a_job_once_and_both_get_its_result(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    workers = [_worker(tmp_path / "shared", runs, "wait", "2") for _ in range(2)]
    outs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    assert [out.strip() for out, _err in outs] == ["built", "built"]
    assert runs.read_text() == "ran\n"


def test_a_job_its_runner_gave_up_is_run_by_the_worker_that_needs_it(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    quitter = _worker(tmp_path / "shared", runs, "quit", "30")
    assert quitter.communicate(timeout=120)[0].strip() == "quit"
    waiter = _worker(tmp_path / "shared", runs, "wait", "0")
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert out.strip() == "built"
    assert runs.read_text() == "ran\nran\n"


TURN = """
import sys, time
from pathlib import Path
from tests.support import background

shared, log, kind, release = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
background.share(shared)
with background.turn(alone=kind == "alone"):
    with log.open("a") as fh:
        fh.write(f"start {kind}\\n")
    while not release.exists():
        time.sleep(0.05)
    with log.open("a") as fh:
        fh.write(f"end {kind}\\n")
"""


def _blocked(pid: int) -> bool:
    """The process waits for a flock (a `->` line of /proc/locks names it)."""
    return any(line.split()[1] == "->" and line.split()[5] == str(pid) for line in Path("/proc/locks").open())


def _until(what: str, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_test_marked_alone_has_no_test_of_another_worker_beside_it(tmp_path: Path) -> None:
    log, release = tmp_path / "log", tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def test(kind: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", TURN, str(tmp_path / "shared"), str(log), kind, str(release)],
            cwd=ROOT, env=env, text=True,
        )  # fmt: skip

    first = test("side")  # a test of the other worker, running
    _until("the first test started", log.exists)
    alone = test("alone")
    _until("the alone test waits for the first to end", lambda: _blocked(alone.pid))
    later = test("later")
    _until("a test started meanwhile waits for the alone one", lambda: _blocked(later.pid))
    release.touch()
    for proc in (first, alone, later):
        assert proc.wait(timeout=60) == 0
    assert log.read_text().split("\n")[:-1] == [
        "start side", "end side", "start alone", "end alone", "start later", "end later",
    ]  # fmt: skip
