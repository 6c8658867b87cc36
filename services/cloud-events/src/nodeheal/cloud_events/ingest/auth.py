"""Who may push events: a shared bearer token or an HMAC-SHA256 signature over the raw body. Pure."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def sign(body: bytes, secret: str) -> str:
    """The header value a sender puts in the signature header: `sha256=<hex>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check(
    *,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    body: bytes,
    token: str | None,
    hmac_secret: str | None,
    hmac_header: str,
    allow_query_token: bool,
    allow_unauthenticated: bool,
) -> str | None:
    """None when the request is authenticated, else why not (said to the caller; never echoes secrets)."""
    if token is None and hmac_secret is None:
        return None if allow_unauthenticated else "the endpoint has no authentication configured"
    if token is not None:
        auth = headers.get("Authorization", "")
        scheme, _, presented = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
            return None
        if allow_query_token and hmac.compare_digest(query.get("token", "").encode(), token.encode()):
            return None
    if hmac_secret is not None:
        signature = headers.get(hmac_header, "").strip()
        if signature:
            expected = sign(body, hmac_secret)
            given = signature if signature.startswith("sha256=") else "sha256=" + signature
            if hmac.compare_digest(given.lower().encode(), expected.encode()):
                return None
            return f"the {hmac_header} signature does not match the body (HMAC-SHA256, 'sha256=<hex>')"
    ways = []
    if token is not None:
        ways.append("'Authorization: Bearer <token>'")
    if hmac_secret is not None:
        ways.append(f"'{hmac_header}: sha256=<hex HMAC-SHA256 of the body>'")
    return "not authenticated: send " + " or ".join(ways)
