"""v5 devices: a secondary secret and extension info

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secondary_secret_enc", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("extension_info", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("extension_info")
        batch_op.drop_column("secondary_secret_enc")
