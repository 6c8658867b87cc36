"""The detector tests' shared parts: a nats-server with the deployed per-role authorization, on which the
detector runs under its role's credential (`deployed.role_nc`) while the test drives as admin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.deploy.natsauth_loader import RoleServer, role_server


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[RoleServer]:
    """A nats-server of the test's own with the deployed per-role authorization and the topology applied (its log
    and credentials in tmp_path/nats)."""
    async with role_server(tmp_path, "detector") as d:
        yield d
