"""Where a call was transferred (cold transfer to a person): the destination's name, its number, and how the
dial ended (Twilio's ``DialCallStatus``; empty until Twilio says).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

Written out in full rather than importing tables.py (see 0001).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:  # SQLite cannot ALTER a column in place; batch copes
        batch.add_column(sa.Column("transfer_destination", sa.Text()))
        batch.add_column(sa.Column("transfer_to", sa.Text()))
        batch.add_column(sa.Column("transfer_status", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("transfer_status")
        batch.drop_column("transfer_to")
        batch.drop_column("transfer_destination")
