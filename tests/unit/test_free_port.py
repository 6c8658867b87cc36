"""`free_port` never hands the same port to two callers before either could bind it: not in one process,
not across processes (two pytest-xdist workers, the services `nodeheal up` starts). The ledger lives in
the temporary directory; each test here gives its processes a directory of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodeheal.cli import procs
from nodeheal.sim.embedded import free_port as embedded_free_port

PICKS = 400
"""Ports asked for per process without binding them. `free_port` picks at random from the ~12,800 ports below
the ephemeral range: 800 picks without the ledger would repeat one with near certainty (~25 repeats
expected)."""

PICK = f"from nodeheal.cli.procs import free_port\nprint(' '.join(str(free_port()) for _ in range({PICKS})))"


def test_two_processes_never_get_the_same_port(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    children = [
        subprocess.Popen([sys.executable, "-c", PICK], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    ports = [int(p) for child in children for p in child.communicate(timeout=120)[0].split()]
    assert all(child.returncode == 0 for child in children)
    assert len(ports) == 2 * PICKS
    assert len(set(ports)) == len(ports), sorted(p for p in set(ports) if ports.count(p) > 1)


def test_a_port_is_not_handed_out_again_while_held_and_is_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    port = procs.free_port()
    assert procs._hand_out(port) is False  # held: a caller that probes it now is told to probe again
    monkeypatch.setattr(procs, "PORT_HOLD_S", 0.0)
    assert procs._hand_out(port) is True  # let go once the hold is over


def test_a_listener_port_is_never_one_an_outgoing_connection_could_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outgoing connections get their local port from the ephemeral range: a port handed out there could be
    taken by any client's connection before the server binds it (seen: a detector's health port, `address
    already in use`). Where the range can be read and leaves room below it, no pick falls inside it."""
    ephemeral = procs._ephemeral_range()
    if ephemeral is None or procs._listen_candidates() is None:
        pytest.skip("no readable ephemeral range with room below it on this machine")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    ports = [procs.free_port() for _ in range(200)]
    assert all(procs.LISTEN_FLOOR <= port < ephemeral[0] for port in ports), sorted(ports)
    assert len(set(ports)) == len(ports)


def test_the_embedded_server_picks_through_the_same_ledger() -> None:
    assert embedded_free_port is procs.free_port
