"""Voicemail messages.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-26

Written out in full rather than importing tables.py (see 0001).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_sid", sa.Text(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("audio_path", sa.Text(), nullable=False),
        sa.Column("transcript", sa.Text(), nullable=True),
        sa.Column("ended_by", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["call_sid"], ["calls.call_sid"], name="fk_messages_call_sid_calls",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
    )
    op.create_index("ix_messages_call_sid", "messages", ["call_sid"])
    op.create_index("ix_messages_created_at", "messages", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_created_at", table_name="messages")
    op.drop_index("ix_messages_call_sid", table_name="messages")
    op.drop_table("messages")
