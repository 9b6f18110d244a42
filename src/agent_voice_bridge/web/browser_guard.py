"""Which ``Host`` a browser may reach the softphone at, and which page may open a media stream.

Two browser attacks on a server that has no API key to stop them:

* **DNS rebinding.** A page on ``evil.example`` re-points its name at 127.0.0.1 and
  then, being "same origin" with the development server on the developer's
  machine, reads ``/phone/token`` and places calls with their AI key. Its requests
  carry ``Host: evil.example``: in development mode ``/phone*`` and ``/calls*`` answer
  only loopback hosts (``127.0.0.1``, ``localhost``, ``[::1]``, any port) and the
  host of ``server.public_url``; anything else gets 421. (Production needs the API
  key there, which a rebinding page does not have.)
* **Cross-site WebSockets.** Browsers let any page open a WebSocket anywhere and
  only say who they are in ``Origin``. Twilio sends no ``Origin``, so a stream
  without one is let through to the usual checks; a stream *with* one must come
  from the softphone's own page: the request's own origin (in development only on
  an accepted host, see above) or ``server.public_url``'s.

Starlette's ``TrustedHostMiddleware`` would apply to every path (Twilio's webhooks
reach a development server through tunnels under any name) and reads ``[::1]:8080``
as the host ``[``, so this is a small check of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from loguru import logger
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agent_voice_bridge.log_values import shown
from agent_voice_bridge.pipelines.config import ServerConfig

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
BROWSER_PATHS = ("/phone", "/calls")
"""The paths a browser page uses (the softphone and its APIs, the calls API)."""


def host_name(netloc: str) -> str | None:
    """The host name of ``host[:port]`` or ``[v6][:port]``, lower case; None if that is not what it is."""
    try:
        parts = urlsplit(f"//{netloc}")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname


def origin_netloc(origin: str) -> tuple[str, str] | None:
    """(scheme, host[:port]) of an ``Origin`` header, lower case; None for ``null`` or anything malformed."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or host_name(parts.netloc) is None:
        return None
    return parts.scheme, parts.netloc.lower()


class BrowserHosts:
    """The hosts and origins this server accepts from browsers, decided once from the config."""

    def __init__(self, server: ServerConfig, *, development: bool):
        self.development = development
        self._trust_proxy = server.trust_proxy
        self._public = origin_netloc(server.public_url or "")
        self._hosts = set(LOOPBACK_HOSTS)
        if self._public:
            self._hosts.add(host_name(self._public[1]) or "")

    def host_ok(self, host_header: str) -> bool:
        """Whether a browser-facing page may be served to a request for ``Host: host_header``."""
        return not self.development or host_name(host_header) in self._hosts

    def origin_ok(self, headers: Mapping[str, str]) -> bool:
        """Whether a WebSocket handshake with these headers may go on to the stream checks."""
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser (Twilio, a script): the stream token and signature decide
        parsed = origin_netloc(origin)
        if parsed is None:
            return False
        if parsed == self._public:
            return True
        own = [headers.get("host", "")]
        if self._trust_proxy and headers.get("x-forwarded-host"):
            own.append(headers["x-forwarded-host"].split(",")[0].strip())
        # The scheme is left out: behind TLS offload the page is https:// and the socket reaches us as ws://.
        return any(parsed[1] == host.lower() and self.host_ok(host) for host in own if host)


def is_browser_path(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in BROWSER_PATHS)


class BrowserHostGuard:
    """ASGI middleware: 421 for a browser-facing path requested under a host development mode does not serve."""

    def __init__(self, app: ASGIApp, hosts: BrowserHosts):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.hosts.development and is_browser_path(scope["path"]):
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not self.hosts.host_ok(host):
                logger.warning(f"{scope['path']}: refused Host {shown(host)} (development mode serves browsers "
                               "only on localhost and server.public_url's host)")
                response = PlainTextResponse("development mode: open this on localhost (127.0.0.1) or "
                                             "server.public_url's host", status_code=421)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
