"""The one error type every normalizer raises for input it cannot turn into events.

A normalizer never raises anything else on bad input: callers (the CLI, the HTTP endpoint, the
pollers) catch `PayloadError`, tell the sender what was wrong and where, and keep the raw bytes.
"""

from __future__ import annotations


class PayloadError(ValueError):
    """Input that is not what the named source sends. `where` is a JSON path like `$.content.notBefore`."""

    def __init__(self, message: str, *, source: str, where: str = "$") -> None:
        self.source = source
        self.where = where
        self.detail = message
        super().__init__(f"{source} payload at {where}: {message}")
