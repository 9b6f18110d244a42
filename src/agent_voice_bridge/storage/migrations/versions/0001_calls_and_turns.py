"""Calls and their transcript turns.

Revision ID: 0001
Revises:
Create Date: 2025-11-26

Written out in full rather than importing tables.py: a migration must keep creating the schema as it was
at this revision, whatever tables.py says later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_sid", sa.Text(), nullable=False),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("stream_sid", sa.Text(), nullable=False),
        sa.Column("caller", sa.Text(), nullable=False),
        sa.Column("callee", sa.Text(), nullable=False),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("pipeline", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("ended_at", WHEN, nullable=True),
        sa.Column("barge_ins", sa.Integer(), nullable=False),
        sa.Column("replies", sa.Integer(), nullable=False),
        sa.Column("first_reply_ms", sa.Float(), nullable=True),
        sa.Column("usage", JSON, nullable=False),
        sa.Column("parameters", JSON, nullable=False),
        sa.Column("recording_path", sa.Text(), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("call_sid", name="pk_calls"),
    )
    op.create_index("ix_calls_caller_started_at", "calls", ["caller", "started_at"])
    op.create_index("ix_calls_callee_started_at", "calls", ["callee", "started_at"])
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_table(
        "turns",
        sa.Column("call_sid", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("speaker", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("started_ms", sa.Float(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("heard_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["call_sid"], ["calls.call_sid"], name="fk_turns_call_sid_calls", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("call_sid", "seq", name="pk_turns"),
    )


def downgrade() -> None:
    op.drop_table("turns")
    op.drop_index("ix_calls_started_at", table_name="calls")
    op.drop_index("ix_calls_callee_started_at", table_name="calls")
    op.drop_index("ix_calls_caller_started_at", table_name="calls")
    op.drop_table("calls")
