"""Who may call one line, how often and for how long: the server's ``security:`` with the line's own keys over it.

Built once per line when its configuration loads (and anew on every reload), so the gate applies a line's
rules to that line's calls without knowing about lines. A line that sets its own ``rate_limit`` counts its
callers in a window of its own (``rate_scope``): sliding windows of different lengths cannot share one count.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_voice_bridge.pipelines.config import LineSecurity, RateLimit, SecurityConfig, overlay


@dataclass(frozen=True)
class CallerPolicy:
    allowlist: frozenset[str] = frozenset()
    """E.164 numbers allowed to call; empty: anyone."""
    blocklist: frozenset[str] = frozenset()
    rate_limit: RateLimit | None = None
    rate_scope: str = ""
    """"": the server-wide window of each caller; else the line whose own rate limit this is."""
    max_call_seconds: float = 3600.0

    @classmethod
    def of(cls, server: SecurityConfig, line: LineSecurity | None = None, name: str = "") -> CallerPolicy:
        """``server``'s policy as line ``name`` sees it when it sets ``line`` (keys it leaves out are the server's)."""
        rules = overlay(server, line, LineSecurity)
        own_window = line is not None and "rate_limit" in line.model_fields_set
        return cls(frozenset(rules.allowlist), frozenset(rules.blocklist), rules.rate_limit,
                   name if own_window else "", rules.max_call_seconds)
