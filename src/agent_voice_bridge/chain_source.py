"""Which chain a call gets: the one place the server and every router ask, per call.

Nothing in the server holds "the" chain: ``/incoming``, the media stream, the
softphone, ``/outbound`` and ``POST /calls`` each ask :meth:`ChainSource.chain_for`
when a call needs one, and the call keeps what it was given to its end. So a
reload (or, with lines, a different chain per number) is one :meth:`ChainSource.swap`:
calls already running keep their chain, untouched; the next call gets the new one.
"""

from __future__ import annotations

from agent_voice_bridge.pipelines.chain import Chain


class ChainSource:
    """The chain new calls get, swappable atomically (one reference replaced; asyncio never sees half)."""

    def __init__(self, chain: Chain) -> None:
        self._chain = chain

    @property
    def current(self) -> Chain:
        """The chain a new call would get now: for ``/healthz`` and the softphone's listing, not for a call."""
        return self._chain

    def chain_for(self, line_number: str = "") -> Chain:
        """The chain for a call on ``line_number`` (the bridge's own number on the call: Twilio's ``To`` for an
        incoming call, ``From`` for one it places). One line per server today: every number gets the same."""
        return self._chain

    def swap(self, chain: Chain) -> None:
        """Serve ``chain`` (already checked) to calls from now on; it warms up first, so no call waits for that."""
        chain.warm_up()
        self._chain = chain
