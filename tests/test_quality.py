"""Static checks run with the tests so the README's one test command covers them:
ruff (lint), mypy (strict, pydantic plugin) and import-linter (services never import each other)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which(cmd[0], path=str(BIN)) or cmd[0]
    return subprocess.run([tool, *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_ruff_lint_is_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr


@pytest.mark.slow
def test_import_layering_contracts_hold() -> None:
    result = _run("lint-imports")
    assert result.returncode == 0, result.stdout + result.stderr
