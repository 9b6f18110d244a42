"""Call records and transcripts, in SQLite (default, one file) or PostgreSQL (several hosts sharing the load).

    store = CallStore("sqlite:///voice-bridge.db")
    await store.migrate()          # once at start-up: creates/upgrades the schema (alembic, shipped here)
    await store.start_call(CallRecord(call_sid, started_at=datetime.now(UTC), caller=..., callee=...))
    await store.add_turn(call_sid, Turn("caller", "hello", started_ms=1200.0))
    await store.update_call(call_sid, status="completed", outcome="caller_hung_up", ended_at=...)
    await store.close()
"""

from .records import CallRecord, Turn
from .store import CallStore

__all__ = ["CallRecord", "CallStore", "Turn"]
