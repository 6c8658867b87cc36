"""The agent's only way to see and restart systemd units.

`Systemd` is the interface; `SystemctlClient` implements it by running `systemctl` (or whatever
`command` says, e.g. `nsenter --target 1 --mount -- systemctl` in a pod with hostPID) as a real
subprocess: `systemctl show -p Id,ActiveState,NRestarts <units...>` and `systemctl restart <unit>`.
Tests point `command` at a small script in a temporary directory; the fleet simulator passes a
`runner` that answers those two command lines from a simulated node's state, so the same argument
building and output parsing run. This module must never talk to NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast, get_args

from nodeheal.schemas.probe import ServiceActiveState

_TIMED_OUT = 124  # the exit code of timeout(1), for a command this client killed at its timeout
_STATES: frozenset[str] = frozenset(get_args(ServiceActiveState))


@dataclass(frozen=True, slots=True)
class UnitStatus:
    unit: str
    state: ServiceActiveState
    restarts: int | None


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    ok: bool
    detail: str


class CommandRunner(Protocol):
    """Runs one command line: (exit code, stdout, stderr)."""

    async def __call__(self, argv: Sequence[str], *, timeout_s: float) -> tuple[int, str, str]: ...


class Systemd(Protocol):
    async def status(self, units: Sequence[str]) -> list[UnitStatus]: ...

    async def restart(self, unit: str, *, timeout_s: float | None = None) -> CommandOutcome: ...


async def run_bounded(argv: Sequence[str], *, timeout_s: float) -> tuple[int | None, bytes, bytes]:
    """Run a program for at most `timeout_s`: (exit code, or None when it was killed at the timeout; stdout;
    stderr). It runs in its own session and the whole session is killed at the timeout: a wrapper's child (a shell
    script's `sleep`, `nsenter`'s program) would otherwise keep the pipes open and the wait going past the
    deadline. `OSError` when it cannot be started."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return None, b"", b""
    return proc.returncode or 0, out, err


def unit_name(service: str) -> str:
    return service if "." in service else f"{service}.service"


def parse_show(output: str, units: Sequence[str]) -> list[UnitStatus]:
    """Parse `systemctl show -p Id,ActiveState,NRestarts u1 u2`: one block per unit, blank-line separated,
    in the order asked."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            current[key.strip()] = value.strip()
        elif current and not line.strip():
            blocks.append(current)
            current = {}
    if current:
        blocks.append(current)
    result: list[UnitStatus] = []
    for index, unit in enumerate(units):
        block = blocks[index] if index < len(blocks) else {}
        raw_state = block.get("ActiveState", "unknown")
        state = cast(ServiceActiveState, raw_state if raw_state in _STATES else "unknown")
        restarts_raw = block.get("NRestarts", "")
        restarts = int(restarts_raw) if restarts_raw.isdigit() else None
        result.append(UnitStatus(unit=unit, state=state, restarts=restarts))
    return result


class SystemctlClient:
    def __init__(
        self,
        *,
        command: Sequence[str] = ("systemctl",),
        timeout_s: float = 10.0,
        restart_timeout_s: float = 120.0,
        runner: CommandRunner | None = None,
    ) -> None:
        self.command = list(command)
        self.timeout_s = timeout_s
        self.restart_timeout_s = restart_timeout_s
        self.runner = runner
        # the last `systemctl show` output and what it parsed to: the same text is not parsed again (on a
        # healthy node it is the same every probe)
        self._last_show: tuple[str, tuple[str, ...], tuple[UnitStatus, ...]] | None = None

    async def _run(self, args: Sequence[str], *, timeout_s: float) -> tuple[int, str, str]:
        if self.runner is not None:
            return await self.runner([*self.command, *args], timeout_s=timeout_s)
        try:
            code, out, err = await run_bounded([*self.command, *args], timeout_s=timeout_s)
        except OSError as exc:
            return 127, "", f"cannot run {self.command[0]!r}: {exc.strerror or exc}"
        if code is None:
            return _TIMED_OUT, "", f"{' '.join([*self.command, *args])} did not finish within {timeout_s:.0f}s"
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    async def status(self, units: Sequence[str]) -> list[UnitStatus]:
        if not units:
            return []
        names = [unit_name(u) for u in units]
        code, out, err = await self._run(["show", "-p", "Id,ActiveState,NRestarts", *names], timeout_s=self.timeout_s)
        if code != 0:
            msg = f"systemctl show failed (exit {code}): {err.strip()[:300]}"
            raise RuntimeError(msg)
        asked = tuple(units)
        last = self._last_show
        if last is not None and last[0] == out and last[1] == asked:
            return list(last[2])
        parsed = parse_show(out, units)
        self._last_show = (out, asked, tuple(parsed))
        return parsed

    async def restart(self, unit: str, *, timeout_s: float | None = None) -> CommandOutcome:
        """`systemctl restart`, waited for `restart_timeout_s` or `timeout_s` if shorter (the request's deadline).
        A `systemctl` killed at its timeout leaves the restart job queued in systemd: it may still complete, and
        the detail says so."""
        wait_s = self.restart_timeout_s if timeout_s is None else min(timeout_s, self.restart_timeout_s)
        code, _out, err = await self._run(["restart", unit_name(unit)], timeout_s=wait_s)
        if code == 0:
            return CommandOutcome(ok=True, detail=f"restarted {unit_name(unit)}")
        if code == _TIMED_OUT:
            return CommandOutcome(
                ok=False,
                detail=f"systemctl restart {unit_name(unit)} did not finish within {wait_s:.0f}s; systemd may still "
                "complete the restart job (the next probe shows the unit's state)",
            )
        return CommandOutcome(
            ok=False, detail=f"systemctl restart {unit_name(unit)} exited {code}: {err.strip()[:300]}"
        )
