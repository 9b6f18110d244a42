"""Memory across calls: what a caller and the AI said before, as a few lines for the instructions.

The summary is extractive (the stored turns, shortened), so it needs no model call
at call start and never says anything that was not said. Agent turns are already
only what the caller heard.
"""

from __future__ import annotations

from agent_voice_bridge.storage.records import CallRecord, Turn

TURN_CHARS = 160
CALL_CHARS = 700


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def summarize_call(record: CallRecord, turns: list[Turn]) -> str:
    when = record.started_at.strftime("%d %B %Y, %H:%M UTC")
    lines = [f"{'Caller' if t.speaker == 'caller' else 'You'}: {_clip(t.text, TURN_CHARS)}" for t in turns if t.text]
    return f"Call on {when}:\n" + _clip("\n".join(lines), CALL_CHARS)


def memory_text(history: list[tuple[CallRecord, list[Turn]]]) -> str:
    """The block appended to the instructions; empty when the caller has no stored calls."""
    if not history:
        return ""
    calls = "\n\n".join(summarize_call(record, turns) for record, turns in history)
    return ("You have spoken with this caller before. What was said in their most recent calls, newest first "
            "(use it if it helps; do not read it out):\n\n" + calls)
