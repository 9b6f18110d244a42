"""Call records and transcripts as text, for ``voice-bridge calls``."""

from __future__ import annotations

from agent_voice_bridge.storage.records import CallRecord, Turn

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


def call_report(record: CallRecord, turns: list[Turn]) -> str:
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
        f"replies    {record.replies}, first reply {first}, barge-ins {record.barge_ins}",
        f"usage      {usage}",
    ]
    if record.recording_path:
        lines.append(f"recording  {record.recording_path}")
    lines.append("transcript" if turns else "transcript (none)")
    lines.extend(turn_line(t) for t in turns)
    return "\n".join(lines)
