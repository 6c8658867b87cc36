"""Static checks run with the tests so the README's one test command covers them:
ruff (lint), mypy (strict, pydantic plugin) and import-linter (services never import each other)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import background

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which(cmd[0], path=str(BIN)) or cmd[0]
    return subprocess.run([tool, *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=900)


def _mypy() -> subprocess.CompletedProcess[str]:
    tool = shutil.which("mypy", path=str(BIN)) or "mypy"
    return background.run([tool], cwd=ROOT, timeout=900)


MYPY = background.job(__file__, "mypy", _mypy)
"""mypy is CPU-bound for tens of seconds: it runs from the start of the session (tests/support/background.py)."""


@pytest.mark.slow
def test_ruff_lint_is_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    result = MYPY.result()
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr


@pytest.mark.slow
def test_import_layering_contracts_hold() -> None:
    result = _run("lint-imports")
    assert result.returncode == 0, result.stdout + result.stderr
