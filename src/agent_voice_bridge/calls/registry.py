"""The registry of live calls in this process."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from agent_voice_bridge.calls.live_call import LiveCall
from agent_voice_bridge.calls.warm_transfer import WarmTransfers

KEPT_SOFTPHONE_CALLS = 50


@dataclass
class CallRegistry:
    """Live calls in this process, for /healthz, shutdown, and tests that check nothing is left."""

    live: dict[str, LiveCall] = field(default_factory=dict)
    finished: int = 0
    refused: int = 0
    transfers: WarmTransfers | None = None
    """Warm transfers in progress: their callers are on hold, off any stream (see calls/warm_transfer.py)."""
    softphone_events: OrderedDict[str, list[dict[str, object]]] = field(default_factory=OrderedDict)
    """The events of recently ended softphone calls (a transfer ends the call: the page asks once its stream has
    closed), at most :data:`KEPT_SOFTPHONE_CALLS` calls."""

    def events_of(self, call_sid: str) -> list[dict[str, object]] | None:
        """A softphone call's events, live or recently ended (None: no such call)."""
        live = next((c for c in self.live.values() if c.info.call_sid == call_sid and c.info.softphone), None)
        return live.events if live is not None else self.softphone_events.get(call_sid)

    def keep_events(self, live: LiveCall) -> None:
        """A softphone call is ending: keep its events for the page, which asks once the stream closes."""
        if not live.info.softphone:
            return
        self.softphone_events[live.info.call_sid] = live.events
        while len(self.softphone_events) > KEPT_SOFTPHONE_CALLS:
            self.softphone_events.popitem(last=False)

    def moving_to_new_stream(self, call_sid: str) -> LiveCall | None:
        """The live call with this SID that waits for Twilio's next stream (it is pressing keys), if any."""
        return next((call for call in self.live.values()
                     if call.info.call_sid == call_sid and call.info.next_stream is not None
                     and not call.info.next_stream.done()), None)

    async def end_all(self, goodbye: str, reason: str) -> None:
        await asyncio.gather(*(call.end(goodbye, reason, "shutdown") for call in list(self.live.values())))
