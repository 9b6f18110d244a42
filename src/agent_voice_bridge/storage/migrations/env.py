"""Alembic environment for the call store.

Run through ``CallStore.migrate()``, which hands over an open connection (already inside a transaction
and holding the migration lock) in ``config.attributes["connection"]``; no alembic.ini is involved.
"""

from __future__ import annotations

from alembic import context

from agent_voice_bridge.storage.tables import metadata

VERSION_TABLE = "voice_bridge_alembic_version"  # not "alembic_version": the database may be shared

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the call-store migrations with CallStore(url).migrate(), which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite can only ALTER by copying the table
)
with context.begin_transaction():
    context.run_migrations()
