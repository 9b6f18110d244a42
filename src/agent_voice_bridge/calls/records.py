"""The records of one call: its memory at start, its journal and recording, their close, a refusal.

Part of the call's life, not of ``storage/`` (which only persists what it is given and
imports nothing above it); kept apart from the call session so that running a call
and keeping its records stay separate concerns; every step here is bounded, since a slow database must
delay a call's start by little and never hold up its end.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from loguru import logger

from agent_voice_bridge.calls.live_call import LiveCall
from agent_voice_bridge.phone_numbers import e164
from agent_voice_bridge.pipelines.chain import Chain
from agent_voice_bridge.pipelines.config import LineStorage
from agent_voice_bridge.sids import file_stem
from agent_voice_bridge.storage.journal import CallJournal
from agent_voice_bridge.storage.memory import memory_text
from agent_voice_bridge.storage.records import CallRecord
from agent_voice_bridge.storage.store import CallStore
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.call_recorder import CallRecorder

DB_TIMEOUT_SECS = 1.0
"""How long a call start (memory) or an /incoming refusal waits for the database."""
PRIVATE_PARAMETERS = ("streamToken",)
"""<Parameter>s that are credentials, not facts: never stored."""


async def recall(storage: CallStore, chain: Chain, caller: str, call_sid: str) -> str:
    """The memory block for this caller, when a stage wants it ('' if none, or if the database is slow)."""
    wanted = chain.memory_calls()
    if not wanted or e164(caller) is None:
        return ""  # a withheld, SIP or client caller ID names nobody whose history could be theirs
    try:
        history = await asyncio.wait_for(storage.caller_history(caller, wanted, exclude=call_sid),
                                         DB_TIMEOUT_SECS)
    except Exception as exc:  # the call starts without memory rather than not at all
        logger.warning(f"call {call_sid}: no memory of earlier calls ({exc.__class__.__name__}: {exc})")
        return ""
    return memory_text(history)


async def open_records(storage: CallStore | None, info: CallInfo, chain: Chain, keep: LineStorage) -> None:
    """A call's records as its line keeps them (``keep``: the line's ``storage``): its memory of earlier calls,
    its journal, and a recording when the line records."""
    info.recordings = keep.recordings  # voicemail messages too
    if storage is None:
        return
    info.memory = await recall(storage, chain, info.person, info.call_sid)
    info.journal = open_journal(storage, info, chain.source)
    if keep.record:
        info.recorder = open_recorder(keep.recordings, info)


async def call_began(storage: CallStore, call_sid: str) -> float | None:
    """When a call that is back on a new stream (from a transfer) began, so its record keeps one clock (None if
    unknown, or the database is slow)."""
    try:
        record = await asyncio.wait_for(storage.get_call(call_sid), DB_TIMEOUT_SECS)
    except Exception as exc:
        logger.warning(f"call {call_sid}: its start is not known ({exc.__class__.__name__}); timed from now")
        return None
    return record.started_at.timestamp() if record is not None else None


def open_journal(storage: CallStore, info: CallInfo, pipeline: str) -> CallJournal:
    record = CallRecord(
        call_sid=info.call_sid or info.stream_sid, stream_sid=info.stream_sid, caller=info.caller,
        callee=info.callee, direction=info.direction, pipeline=pipeline, line=info.line,
        started_at=datetime.fromtimestamp(info.started_at, timezone.utc),
        parameters={k: v for k, v in info.parameters.items() if k not in PRIVATE_PARAMETERS})
    journal = CallJournal(storage, record)
    journal.open()
    return journal


def open_recorder(directory: str, info: CallInfo) -> CallRecorder | None:
    try:
        path = Path(directory) / f"{file_stem(info.call_sid)}.wav"
        recorder = CallRecorder(path)
    except ValueError as exc:
        logger.error(f"call: not recorded: {exc}")
        return None
    except OSError as exc:
        logger.error(f"call {info.call_sid}: cannot record to {path} ({exc}); the call goes on unrecorded")
        return None
    if info.journal is not None:
        info.journal.record.recording_path = str(path)
        info.journal.update(recording_path=str(path))
    return recorder


async def close_records(live: LiveCall) -> None:
    info = live.info
    if info.recorder is not None:
        try:
            info.recorder.close()
        except OSError as exc:
            logger.error(f"call {info.call_sid}: finishing the recording failed ({exc})")
    if info.journal is not None:
        stats, playback = info.stats, info.playback
        reason = {"reason": live.reason} if live.reason else {}  # why it ended as it did (a fallback's cause)
        await info.journal.close(playback.heard_ms, playback.sent_ms, outcome=live.outcome, status="completed",
                                 **reason, barge_ins=stats.barge_ins, replies=stats.replies,
                                 session_switches=stats.session_switches,
                                 first_reply_ms=None if stats.first_reply_ms is None else round(stats.first_reply_ms, 1),
                                 turn_latency=info.timeline.records())


async def record_refusal(storage: CallStore, form: dict[str, str], reason: str, pipeline: str,
                         line: str = "") -> None:
    """A call the gate turned away at ``/incoming`` (allowlist, rate limit, busy) is a record too."""
    now = datetime.now(timezone.utc)
    record = CallRecord(call_sid=form["CallSid"], started_at=now, ended_at=now, caller=form.get("From", ""),
                        callee=form.get("To", ""), pipeline=pipeline, line=line, status="rejected", outcome="rejected",
                        reason=reason)
    try:
        await asyncio.wait_for(storage.start_call(record), DB_TIMEOUT_SECS)
    except Exception as exc:
        logger.warning(f"call {record.call_sid}: the refusal was not stored ({exc.__class__.__name__}: {exc})")
