"""The server's API key (``server.api_key``), as the softphone and the ``/calls`` API take it."""

from __future__ import annotations

import hmac

from starlette.requests import Request


def presented_key(request: Request) -> str | None:
    """``X-API-Key``, ``Authorization: Bearer``, or ``?key=`` (for a link a browser can open)."""
    key = request.headers.get("x-api-key")
    if not key:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    return key or request.query_params.get("key") or None


def key_matches(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())
