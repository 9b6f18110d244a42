"""How many times a call's model session was switched mid-call (a Gemini goAway).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Written out in full rather than importing tables.py (see 0001).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:  # SQLite cannot ALTER a column in place; batch copes
        batch.add_column(sa.Column("session_switches", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("session_switches")
