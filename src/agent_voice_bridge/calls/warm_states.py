"""The states of a warm transfer, what moves it on, and how long each may last.

A warm transfer puts the caller on hold, rings the person, briefs them and lets
them accept or decline. The caller must never be left alone on hold: every state
in which they wait has a timeout, and every way out of it that is not "joined"
brings them back to the AI (or to voicemail). Twilio enforces the first two
timeouts itself (the ring timeout of the person's call, answering-machine
detection, the ``<Gather>`` timeout of the brief); the bridge's own watchdog
(:func:`hold_limit_secs`) catches a webhook that never comes.

::

    dialling ──human──▶ briefing ──accepted──▶ joined ──person left──▶ back
        │                  │                     └──caller left──▶ ended
        ├─machine/no answer/busy/failed─▶ back (or voicemail)
        │                  ├─declined / no input / person hung up──▶ back (or voicemail)
        └──────────────────┴─caller hung up──▶ ended  (the person's call is cancelled)
"""

from __future__ import annotations

from enum import StrEnum


class WarmState(StrEnum):
    DIALLING = "dialling"
    """The caller hears hold audio; the person's phone rings. Timeout: the ring timeout, then AMD's."""
    BRIEFING = "briefing"
    """A person answered and hears the brief; they accept or decline. Timeout: the brief's."""
    JOINED = "joined"
    """Both in one conference; the AI has left. The call is theirs."""
    BACK = "back"
    """Nobody took the call (declined, no answer, busy, a machine): the caller is back with the AI or voicemail."""
    ENDED = "ended"
    """The caller hung up (on hold, or after talking to the person)."""


class WarmEvent(StrEnum):
    HUMAN_ANSWERED = "human_answered"
    MACHINE_ANSWERED = "machine_answered"
    NOT_ANSWERED = "not_answered"  # no-answer, busy, failed, canceled
    ACCEPTED = "accepted"
    DECLINED = "declined"  # said no, pressed another key, or no input before the brief's timeout
    PERSON_LEFT = "person_left"  # the person's leg ended (hung up during the brief, or after joining)
    CALLER_LEFT = "caller_left"
    TIMED_OUT = "timed_out"  # the bridge's watchdog: no webhook moved the transfer on in time


WAITING = frozenset({WarmState.DIALLING, WarmState.BRIEFING})
"""States in which the caller is on hold: each has a timeout, and each has a way back."""

_NEXT: dict[tuple[WarmState, WarmEvent], WarmState] = {
    (WarmState.DIALLING, WarmEvent.HUMAN_ANSWERED): WarmState.BRIEFING,
    (WarmState.BRIEFING, WarmEvent.ACCEPTED): WarmState.JOINED,
    (WarmState.JOINED, WarmEvent.PERSON_LEFT): WarmState.BACK,
    (WarmState.JOINED, WarmEvent.CALLER_LEFT): WarmState.ENDED,
    **{(state, event): WarmState.BACK for state in WAITING
       for event in (WarmEvent.MACHINE_ANSWERED, WarmEvent.NOT_ANSWERED, WarmEvent.DECLINED,
                     WarmEvent.PERSON_LEFT, WarmEvent.TIMED_OUT)},
    **{(state, WarmEvent.CALLER_LEFT): WarmState.ENDED for state in WAITING},
}

AMD_SECS = 30
"""Twilio's answering-machine detection may take this long after the answer (its ``MachineDetectionTimeout``)."""
WATCHDOG_MARGIN_SECS = 15
"""Slack for webhooks in flight before the watchdog decides one was lost."""


def next_state(state: WarmState, event: WarmEvent) -> WarmState | None:
    """Where ``event`` takes a transfer in ``state``; None if it does not apply there (a late or repeated webhook)."""
    return _NEXT.get((state, event))


def hold_limit_secs(ring_secs: int, brief_secs: int) -> int:
    """The longest a caller may wait on hold before the watchdog brings them back, whatever Twilio did."""
    return ring_secs + AMD_SECS + brief_secs + WATCHDOG_MARGIN_SECS
