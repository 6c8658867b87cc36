"""The demo's kubelet: a service process whose /healthz fails is restarted as deploy/'s probes say."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from nodeheal.cli.procs import SERVICES, ServiceProcess, free_port
from nodeheal.sim import liveness as lv

ROOT = Path(__file__).resolve().parents[3]

# a process with an HTTP port whose /healthz answers the status written in a file (200 or 503)
SERVER = """
import http.server, os, pathlib
status = pathlib.Path(os.environ["STATUS_FILE"])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = int(status.read_text())
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"start failed" if code != 200 else b"ok")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def _containers() -> list[dict[str, object]]:
    out = []
    for name in ("detector", "diagnoser", "remediator", "ingest"):
        for doc in yaml.safe_load_all((ROOT / "deploy" / "base" / f"{name}.yaml").read_text()):
            if doc and doc.get("kind") in ("Deployment", "StatefulSet"):
                out.extend(doc["spec"]["template"]["spec"]["containers"])
    return out


def test_the_demo_probes_as_the_manifests_say() -> None:
    containers = _containers()
    assert len(containers) >= len(SERVICES)
    for c in containers:
        live, startup = c["livenessProbe"], c["startupProbe"]  # type: ignore[index]
        assert live["httpGet"]["path"] == startup["httpGet"]["path"] == "/healthz"
        assert live["periodSeconds"] == lv.LIVENESS_PERIOD_S
        assert live["timeoutSeconds"] == lv.LIVENESS_TIMEOUT_S
        assert live["failureThreshold"] == lv.LIVENESS_FAILURES
        assert startup["periodSeconds"] == lv.STARTUP_PERIOD_S
        assert startup["failureThreshold"] == lv.STARTUP_FAILURES


def _process(tmp_path: Path, name: str, status: int) -> tuple[ServiceProcess, Path]:
    status_file = tmp_path / f"{name}.status"
    status_file.write_text(str(status))
    port = free_port()
    env = {"STATUS_FILE": str(status_file), "PORT": str(port)}
    proc = ServiceProcess(name, ["-c", SERVER], env, port, tmp_path / f"{name}.log")
    proc.start()
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return proc, status_file


@pytest.mark.asyncio
async def test_a_failing_healthz_is_restarted_a_passing_or_paused_one_is_not(tmp_path: Path) -> None:
    healthy, _ = _process(tmp_path, "diagnoser", 200)
    failing, failing_status = _process(tmp_path, "remediator", 503)
    paused, _ = _process(tmp_path, "detector", 503)
    procs = [healthy, failing, paused]
    t = [0.0]
    timings = lv.ProbeTimings(startup_period_s=1, startup_failures=5, period_s=10, timeout_s=3, failures=3)
    sup = lv.Liveness(procs, timings=timings, paused=lambda: {"detector"}, clock=lambda: t[0])
    try:
        before = {p.name: p.pid for p in procs}
        await sup.step()  # first sight: watched as ready, next probe one period later
        for _ in range(2):  # two failed liveness probes: not yet
            t[0] += 10
            await sup.step()
        assert sup.restarts == [] and failing.pid == before["remediator"]
        failing_status.write_text("200")  # it recovers before the third failure: the count starts again
        t[0] += 10
        await sup.step()
        assert sup.restarts == []
        failing_status.write_text("503")
        for _ in range(3):
            t[0] += 10
            await sup.step()
        assert [(r.service, r.phase) for r in sup.restarts] == [("remediator", "liveness")]
        assert sup.restarts[0].reason.startswith("503")
        assert failing.pid != before["remediator"] and failing.alive
        assert healthy.pid == before["diagnoser"] and paused.pid == before["detector"]
        # the restarted process is in its startup probe: seen as new (one round), then 5 failures 1 s apart
        for _ in range(5):
            t[0] += 1
            await sup.step()
        assert len(sup.restarts) == 1
        t[0] += 1
        await sup.step()
        assert [r.phase for r in sup.restarts] == ["liveness", "startup"]
        assert sup.summary()["liveness_restarts"] == 2
    finally:
        for p in procs:
            p.kill()
