"""The registry of live calls in this process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agent_voice_bridge.calls.live_call import LiveCall
from agent_voice_bridge.calls.warm_transfer import WarmTransfers


@dataclass
class CallRegistry:
    """Live calls in this process, for /healthz, shutdown, and tests that check nothing is left."""

    live: dict[str, LiveCall] = field(default_factory=dict)
    finished: int = 0
    refused: int = 0
    transfers: WarmTransfers | None = None
    """Warm transfers in progress: their callers are on hold, off any stream (see calls/warm_transfer.py)."""

    async def end_all(self, goodbye: str, reason: str) -> None:
        await asyncio.gather(*(call.end(goodbye, reason, "shutdown") for call in list(self.live.values())))
