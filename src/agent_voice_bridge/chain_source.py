"""Which chain a call gets: the one place the server and every router ask, per call.

Nothing in the server holds "the" chain: ``/incoming``, the media stream, the
softphone, ``/outbound`` and ``POST /calls`` each ask for the call's :class:`Line`
(by the number called or placed from, or by the line name bound into its stream token)
when a call needs one, and the call keeps that line's chain to its end. So a reload is
one :meth:`ChainSource.swap` of a whole, already checked :class:`Lines`: calls already
running keep their chain, untouched; the next call gets the new one.
"""

from __future__ import annotations

from dataclasses import replace

from agent_voice_bridge.lines import Line, Lines
from agent_voice_bridge.pipelines.chain import Chain
from agent_voice_bridge.pipelines.config import BridgeConfig


class ChainSource:
    """The lines new calls get, swappable atomically (one reference replaced; asyncio never sees half)."""

    def __init__(self, lines: Lines | Chain, config: BridgeConfig | None = None) -> None:
        """``lines``, or one chain for every number under ``config``'s security and storage."""
        self._lines = lines if isinstance(lines, Lines) else Lines.single(lines, config)

    @property
    def lines(self) -> Lines:
        return self._lines

    @property
    def current(self) -> Chain:
        """The chain of the default (else first) line: for ``/healthz`` and the softphone's listing, not a call."""
        return self._lines.first.chain

    def line_for(self, line_number: str) -> Line | None:
        """The line for a call on ``line_number`` (the bridge's own number on the call: Twilio's ``To`` for an
        incoming call, ``From`` for one it places): that number's line, else the default, else None."""
        return self._lines.for_number(line_number)

    def line_named(self, name: str) -> Line | None:
        return self._lines.named(name)

    def chain_for(self, line_number: str = "") -> Chain:
        """The chain of :meth:`line_for`, or of the first line when no line takes that number."""
        line = self._lines.for_number(line_number)
        return (line or self._lines.first).chain

    def swap(self, lines: Lines | Chain) -> None:
        """Serve ``lines`` (already checked) to calls from now on; they warm up first, so no call waits for that.
        A single chain replaces the first line's, under that line's rules."""
        lines = lines if isinstance(lines, Lines) else Lines([replace(self._lines.first, chain=lines)])
        for line in lines:
            line.chain.warm_up()
        self._lines = lines
