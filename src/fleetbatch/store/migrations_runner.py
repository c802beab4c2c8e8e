"""Applies the Alembic migrations shipped inside the package to a live connection."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

SCRIPT_LOCATION = "fleetbatch.store:migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for fleetbatch's migrations, optionally bound to `connection`."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_to_head(connection: Connection) -> None:
    """Run every pending migration inside the connection's current transaction."""
    command.upgrade(alembic_config(connection), "head")
