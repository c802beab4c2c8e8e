"""Alembic environment: migrations run on the connection fleetbatch hands over."""

from __future__ import annotations

from alembic import context

from fleetbatch.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("fleetbatch migrations run through fleetbatch.store (Store.migrate)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
