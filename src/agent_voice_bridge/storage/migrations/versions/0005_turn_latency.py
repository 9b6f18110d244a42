"""Each call's per-turn latency breakdown (a JSON list, one entry per reply); NULL for older calls.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Written out in full rather than importing tables.py (see 0001).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:  # SQLite cannot ALTER a column in place; batch copes
        batch.add_column(sa.Column("turn_latency", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("turn_latency")
