"""tests/support/background.py under pytest-xdist: processes given one shared directory run each job once
(the others wait for its result), and a job whose runner stops before it finished is run by whoever needs
it. Each process here stands for one xdist worker."""

from __future__ import annotations

import os
import subprocess
import sys
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
