"""Moving a live call to its chain's fallback (an AI stage's ``fallback:``) when the AI fails.

The caller stays on the same Twilio media stream and the same call (record, journal,
recording, time limit). When the failure is reported, ``call.handover`` tells the AI
pipeline's ``twilio.input`` to stop reading: what the caller says from then on waits in
the socket, and the one message the input may already have had in hand is kept for the
next chain. The AI pipeline is cancelled, Twilio drops what is left of the AI's last
words (``clear``), and the fallback chain's pipeline is built on the same call; its
``twilio.input`` starts with that message and then reads the socket, so everything the
caller said after the failure reaches the fallback (the voicemail keeps speech that
started before its beep). The call's outcome becomes ``voicemail`` (``fallback`` for
another chain) whatever ends it later, with the failure as the reason.
"""

from __future__ import annotations

import asyncio
from loguru import logger

from agent_voice_bridge.calls.live_call import LiveCall
from agent_voice_bridge.pipelines.chain import Chain


def outcome_of(fallback: Chain) -> str:
    return "voicemail" if any(stage.name == "voicemail" for stage in fallback.stages) else "fallback"


def move_to_fallback(live: LiveCall, fallback: Chain, reason: str) -> None:
    """The AI stage failed: stop its pipeline and run ``fallback`` next (see :func:`take_over`)."""
    if live.ending or live.next_chain is not None or live.worker is None:
        return
    live.next_chain = fallback
    live.info.handover = []  # twilio.input: stop reading, leave the stream to the next chain
    live.outcome = live.fell_back = outcome_of(fallback)
    live.reason = f"backend_failure: {reason}"
    logger.warning(f"call {live.info.call_sid}: {reason}; moving the caller to {fallback.source}")
    asyncio.ensure_future(live.worker.cancel(reason=f"moving to the fallback: {reason}"))


async def take_over(live: LiveCall) -> Chain | None:
    """After a pipeline stopped: the fallback chain to run next on the same call, or None (the call is over)."""
    chain, live.next_chain = live.next_chain, None
    info = live.info
    if chain is None or live.ending or info.stream is None or info.stream.closed:
        return None
    if info.playback.playing:  # the rest of the AI's last words: the caller hears the fallback at once instead
        await info.stream.send(info.stream.messages.clear())
        info.playback.on_clear()
        if info.recorder is not None:
            info.recorder.cleared()
        if info.journal is not None:
            info.journal.playback_settled(info.playback.heard_ms, info.playback.sent_ms, cleared=True)
    carried = len(info.handover or [])
    logger.info(f"call {info.call_sid}: {chain.source} takes over the stream"
                + (f" ({carried} unread message{'s' if carried != 1 else ''} handed over)" if carried else ""))
    return chain
