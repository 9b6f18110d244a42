"""Production or development: whether Twilio signatures and stream tokens are checked, decided once.

An empty ``twilio.auth_token`` (a misspelled or empty ``${TWILIO_AUTH_TOKEN:-}``)
used to switch every check off without a word. Now the checks are off only in
*development* mode, which is either asked for (``security.mode: development``) or
inferred when nothing in the file looks like a deployment. A file that does look
like one (an ``https://`` public URL, an API key) and has no token is refused at
load time, so ``check`` fails instead of a server answering anyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent_voice_bridge.pipelines.config import BridgeConfig

Mode = Literal["production", "development"]
DEVELOPMENT_WARNING = ("Twilio signature and stream-token checks are OFF (development mode): anyone who reaches "
                       "this server can place calls. Fine for local development only.")


@dataclass(frozen=True)
class ModeProblem:
    """Why this file may not run with the checks off, and the setting to point at."""

    location: tuple[str, ...]
    message: str


def checks_on(config: BridgeConfig) -> bool:
    """Whether webhooks need Twilio's signature and streams a stream token."""
    security = config.security
    if security.check_signatures is not None:
        return security.check_signatures
    if security.mode == "development":
        return False
    return bool(config.twilio.auth_token)


def security_mode(config: BridgeConfig) -> Mode:
    return "production" if checks_on(config) else "development"


def _production_signs(config: BridgeConfig, *, explicit_development: bool) -> list[str]:
    """What in the file says it serves real callers; an explicit development mode overrides the soft signs."""
    signs = []
    if config.server.public_url and config.server.public_url.startswith("https://"):
        signs.append("server.public_url is https://")
    if not explicit_development:
        if config.server.api_key:
            signs.append("server.api_key is set")
        if config.security.mode == "production":
            signs.append("security.mode is production")
    return signs


def mode_problems(config: BridgeConfig) -> list[ModeProblem]:
    """Empty when the file's security mode is coherent; else one problem saying what to change."""
    if checks_on(config):
        return []
    explicit = config.security.mode == "development" or config.security.check_signatures is False
    signs = _production_signs(config, explicit_development=explicit)
    if not signs:
        return []
    if config.security.check_signatures is False:
        return [ModeProblem(("security", "check_signatures"),
                            f"checks are turned off but this looks like production ({', '.join(signs)}); "
                            "remove check_signatures: false")]
    if config.security.mode == "development":
        return [ModeProblem(("security", "mode"),
                            f"development mode (checks off) is refused here: {', '.join(signs)}")]
    public = _production_signs(config, explicit_development=True)
    return [ModeProblem(("twilio", "auth_token"),
                        f"is empty, which would turn the Twilio signature and stream-token checks off, but this "
                        f"looks like production ({', '.join(signs)}); set it (e.g. TWILIO_AUTH_TOKEN)"
                        + ("" if public else ", or write security.mode: development for a local test server"))]
