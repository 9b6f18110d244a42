"""Checking ``X-Twilio-Signature`` against the URL Twilio actually signed.

Behind TLS offload or a tunnel the app sees ``http://internal:port/...`` while
Twilio signed ``https://public/...``; the URL is rebuilt from ``server.public_url``,
or from ``X-Forwarded-Proto``/``-Host`` when the operator says a proxy they run sets
them. The comparison itself is the ``twilio`` package's (constant time, with and
without the default port, since Twilio signs both ways).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import URL
from twilio.request_validator import RequestValidator


def public_url(url: URL, headers: Mapping[str, str], *, public_base: str | None, trust_proxy: bool,
               websocket: bool = False) -> str:
    """The URL Twilio used for this request (``wss://`` for the media stream)."""
    path = url.path + (f"?{url.query}" if url.query else "")
    if public_base:
        base = public_base.rstrip("/")
    elif trust_proxy and headers.get("x-forwarded-proto"):
        proto = headers["x-forwarded-proto"].split(",")[0].strip()
        host = headers.get("x-forwarded-host", headers.get("host", url.netloc)).split(",")[0].strip()
        base = f"{proto}://{host}"
    else:
        scheme = {"ws": "http", "wss": "https"}.get(url.scheme, url.scheme)
        base = f"{scheme}://{url.netloc}"
    if websocket:
        base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return base + path


class SignatureChecker:
    """Validates Twilio's signature on a webhook or a media-stream handshake."""

    def __init__(self, auth_token: str):
        self._validator = RequestValidator(auth_token)

    def valid(self, url: str, params: Mapping[str, str], signature: str | None) -> bool:
        if not signature:
            return False
        return bool(self._validator.validate(url, dict(params), signature))
