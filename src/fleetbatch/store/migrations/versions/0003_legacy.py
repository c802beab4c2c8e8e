"""legacy northbound API: tokens, per-app call counters, the callback outbox, cancel tasks

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "legacy_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("pair_hash", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.app_id"], name=op.f("fk_legacy_tokens_app_id_apps")
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_legacy_tokens")),
    )
    with op.batch_alter_table("legacy_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_legacy_tokens_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_legacy_tokens_pair_hash"), ["pair_hash"], unique=False)
    op.create_table(
        "api_calls",
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("app_id", "window_start", name=op.f("pk_api_calls")),
    )
    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("due_at", sa.BigInteger(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("delivered_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_outbox_delivered_at_outbox_due_at"),
            ["delivered_at", "due_at"],
            unique=False,
        )

    op.create_table(
        "command_cancel_tasks",
        sa.Column("task_id", sa.String(length=24), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("command_ids", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.app_id"], name=op.f("fk_command_cancel_tasks_app_id_apps")
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_command_cancel_tasks")),
    )
    with op.batch_alter_table("command_cancel_tasks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_command_cancel_tasks_app_id_command_cancel_tasks_created_at"),
            ["app_id", "created_at"],
            unique=False,
        )


def downgrade() -> None:
    op.drop_table("command_cancel_tasks")
    op.drop_table("outbox")
    op.drop_table("api_calls")
    op.drop_table("legacy_tokens")
