"""The tables, as SQLAlchemy Core (no ORM: the store maps rows to dataclasses itself).

These describe the schema the *migrations* create; they are used to build queries and must stay in step
with ``migrations/versions`` (tests/test_storage.py compares the two). Change the schema by adding a
migration, then editing this file to match.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# JSON on SQLite (text), JSONB on PostgreSQL (indexable, compact).
JSONDict = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out on every backend.

    PostgreSQL has ``timestamptz``; SQLite has no time zones at all, so values are stored there as naive
    UTC text (which also sorts correctly) and made aware again on the way out. Naive datetimes handed in
    are taken to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


calls = Table(
    "calls",
    metadata,
    Column("call_sid", Text, primary_key=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("stream_sid", Text, nullable=False),
    Column("caller", Text, nullable=False),
    Column("callee", Text, nullable=False),
    Column("direction", Text, nullable=False),
    Column("pipeline", Text, nullable=False),
    Column("line", Text, nullable=False, server_default=""),
    Column("status", Text, nullable=False),
    Column("outcome", Text),
    Column("reason", Text),
    Column("ended_at", UTCDateTime),
    Column("barge_ins", Integer, nullable=False),
    Column("replies", Integer, nullable=False),
    Column("first_reply_ms", Float),
    Column("session_switches", Integer, nullable=False, server_default="0"),
    Column("usage", JSONDict, nullable=False),
    Column("parameters", JSONDict, nullable=False),
    Column("recording_path", Text),
    Column("turn_latency", JSONDict),  # NULL for calls stored before it existed
    Column("transfer_destination", Text),
    Column("transfer_to", Text),
    Column("transfer_status", Text),
    # The last Turn.seq handed out for this call: add_turn bumps it with one atomic UPDATE, which is what
    # keeps seq gap- and duplicate-free under concurrency (a row lock on PostgreSQL, the write lock on SQLite).
    Column("last_seq", Integer, nullable=False, server_default="0"),
    Index(None, "caller", "started_at"),
    Index(None, "callee", "started_at"),
    Index(None, "started_at"),
    Index(None, "line", "started_at"),
)

turns = Table(
    "turns",
    metadata,
    Column("call_sid", Text, ForeignKey("calls.call_sid", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),  # the primary key is the (call_sid, seq) index
    Column("speaker", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("started_ms", Float, nullable=False),
    Column("truncated", Boolean, nullable=False),
    Column("heard_ms", Float),
)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_sid", Text, ForeignKey("calls.call_sid", ondelete="CASCADE"), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("audio_path", Text, nullable=False),
    Column("transcript", Text),
    Column("ended_by", Text, nullable=False),
    Index(None, "call_sid"),
    Index(None, "created_at"),
)
