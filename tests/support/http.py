"""Plain HTTP probes of a service process's endpoints (/healthz, /readyz, /metrics)."""

from __future__ import annotations

import urllib.error
import urllib.request


def status(url: str) -> int:
    """The HTTP status `url` answers with; 0 when nothing answers (not listening yet, or gone)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0
