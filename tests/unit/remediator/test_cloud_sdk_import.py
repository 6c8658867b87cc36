"""The Alibaba ECS SDK (a third of the remediator's start-up CPU) is imported when the remediator starts
under a provider that can be Alibaba (`alibaba`, `auto`: at start-up, never in the middle of a ladder),
and not at all under another. A fresh interpreter, as the service process starts."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import nodeheal.remediator.app
from nodeheal.remediator.actions.cloud import Clouds
from nodeheal.remediator.settings import CloudSettings
seen = {}
for provider in ("none", "azure", "auto"):
    Clouds(CloudSettings(provider=provider))
    seen[provider] = "alibabacloud_ecs20140526.models" in sys.modules
print(json.dumps(seen))
"""


def test_the_ecs_sdk_is_loaded_at_start_up_only_when_the_provider_can_be_alibaba() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"none": False, "azure": False, "auto": True}
