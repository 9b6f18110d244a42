"""Call records, transcripts and voicemail messages as text, for ``voice-bridge calls``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent_voice_bridge.storage.records import LATENCY_SEGMENTS, CallRecord, Message, Turn

HEADER = f"{'started (UTC)':<19}  {'call':<34}  {'dir':<3}  {'from':<16}  {'to':<16}  {'secs':>6}  outcome"


def call_line(record: CallRecord) -> str:
    duration = f"{record.duration_s:.0f}" if record.duration_s is not None else "…"
    outcome = record.outcome or "(live or lost)"
    if record.reason:
        outcome += f": {record.reason}"
    return (f"{record.started_at:%Y-%m-%d %H:%M:%S}  {record.call_sid:<34}  {record.direction[:3]:<3}  "
            f"{record.caller or '-':<16}  {record.callee or '-':<16}  {duration:>6}  {outcome}")


def _seconds(ms: float) -> str:
    return f"{int(ms // 60000):d}:{ms % 60000 / 1000:04.1f}"


def turn_line(turn: Turn) -> str:
    who = "caller" if turn.speaker == "caller" else "AI"
    cut = f"  [cut off after {turn.heard_ms / 1000:.1f} s]" if turn.truncated and turn.heard_ms is not None else ""
    return f"  {_seconds(turn.started_ms):>7}  {who:>6}: {turn.text}{cut}"


MESSAGE_HEADER = f"{'left (UTC)':<19}  {'call':<34}  {'from':<16}  {'secs':>5}  {'ended by':<11}  transcript"


def _transcript(message: Message) -> str:
    if message.transcript is None:
        return "(not transcribed)"
    return message.transcript or "(no words)"


def message_line(record: CallRecord, message: Message) -> str:
    """One voicemail message in a listing (``CallStore.recent_messages``), under MESSAGE_HEADER."""
    return (f"{message.created_at:%Y-%m-%d %H:%M:%S}  {record.call_sid:<34}  {record.caller or '-':<16}  "
            f"{message.duration_ms / 1000:>5.1f}  {message.ended_by:<11}  {_transcript(message)}")


def message_detail(message: Message) -> str:
    """A message inside one call's report."""
    return (f"  {message.created_at:%H:%M:%S}  {message.duration_ms / 1000:.1f} s, ended by {message.ended_by}, "
            f"{message.audio_path}\n           {_transcript(message)}")


def latency_table(turns: list[dict[str, Any]]) -> list[str]:
    """Per turn, each segment's milliseconds: only the columns some turn has, so a speech-to-speech call
    shows no cascade columns."""
    columns = [c for c in LATENCY_SEGMENTS if any(c in t.get("segments", {}) for t in turns)]
    header = f"  {'turn':>4}  {'at':>7}  " + "  ".join(f"{c:>{max(len(c), 6)}}" for c in columns) + "   total"
    lines = [header]
    for turn in turns:
        cells = []
        for c in columns:
            ms = turn.get("segments", {}).get(c)
            cells.append(f"{'-' if ms is None else f'{ms:.0f}':>{max(len(c), 6)}}")
        total = turn.get("total_ms")
        lines.append(f"  {turn.get('turn', 0):>4}  {_seconds(turn.get('at_ms', 0.0)):>7}  " + "  ".join(cells)
                     + f"  {'-' if total is None else f'{total:.0f}':>6}")
    return lines


def call_report(record: CallRecord, turns: list[Turn], messages: Sequence[Message] = ()) -> str:
    first = f"{record.first_reply_ms:.0f} ms" if record.first_reply_ms is not None else "-"
    usage = ", ".join(f"{k}={v}" for k, v in sorted(record.usage.items())) or "-"
    lines = [
        f"call       {record.call_sid}  (stream {record.stream_sid or '-'})",
        f"direction  {record.direction}, from {record.caller or '-'} to {record.callee or '-'}",
        f"pipeline   {record.pipeline or '-'}",
        f"started    {record.started_at:%Y-%m-%d %H:%M:%S} UTC, "
        + (f"ended after {record.duration_s:.1f} s" if record.duration_s is not None else "not ended"),
        f"outcome    {record.outcome or '(live, or the server stopped mid-call)'}"
        + (f" ({record.reason})" if record.reason else "") + f", status {record.status}",
        f"replies    {record.replies}, first reply {first}, barge-ins {record.barge_ins}"
        + (f", session switches {record.session_switches}" if record.session_switches else ""),
        f"usage      {usage}",
    ]
    if record.transfer_destination:
        status = (record.transfer_status or "no word from Twilio yet").replace("_", " ")
        lines.append(f"transfer   to {record.transfer_destination} ({record.transfer_to or '-'}): {status}")
    if record.recording_path:
        lines.append(f"recording  {record.recording_path}")
    # A turn with no words (the echo line's replies, a model without transcription) would print an empty
    # ``AI:`` line; the replies and barge-ins above already count it.
    if record.turn_latency:
        lines.append("latency (ms per segment; total: caller stopped → reply played)")
        lines.extend(latency_table(record.turn_latency))
    worded = [t for t in turns if t.text.strip()]
    lines.append("transcript" if worded else "transcript (none)")
    lines.extend(turn_line(t) for t in worded)
    if messages:
        lines.append("voicemail")
        lines.extend(message_detail(m) for m in messages)
    return "\n".join(lines)
