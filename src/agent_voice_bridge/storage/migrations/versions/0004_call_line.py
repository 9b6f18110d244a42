"""The line a call was on (a server with ``lines:``); calls stored before lines existed have "".

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08

Written out in full rather than importing tables.py (see 0001).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:  # SQLite cannot ALTER a column in place; batch copes
        batch.add_column(sa.Column("line", sa.Text(), nullable=False, server_default=""))
    op.create_index("ix_calls_line_started_at", "calls", ["line", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_calls_line_started_at", table_name="calls")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("line")
