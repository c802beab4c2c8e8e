"""batch engine: retry bookkeeping, async-command phases, device shadows, engine workers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subtask_timeout_s", sa.Float(), nullable=True))
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_devices_gateway_id"), ["gateway_id"], unique=False)
    with op.batch_alter_table("subtasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failures", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("phase", sa.String(length=16), nullable=True))
        batch_op.drop_index(batch_op.f("ix_subtasks_task_pk_subtasks_target"))
        batch_op.create_index(
            batch_op.f("ix_subtasks_task_pk_subtasks_target"), ["task_pk", "target"], unique=True
        )
    op.create_table(
        "device_shadows",
        sa.Column(
            "device_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("service_id", sa.String(length=64), nullable=False),
        sa.Column("desired", sa.Text(), nullable=True),
        sa.Column("desired_at", sa.BigInteger(), nullable=True),
        sa.Column("reported", sa.Text(), nullable=True),
        sa.Column("reported_at", sa.BigInteger(), nullable=True),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["device_pk"],
            ["devices.pk"],
            name=op.f("fk_device_shadows_device_pk_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_pk", "service_id", name=op.f("pk_device_shadows")),
    )
    op.create_table(
        "engine_workers",
        sa.Column("worker_id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("lease_until", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_engine_workers")),
    )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_gateway_id"))
    op.drop_table("engine_workers")
    op.drop_table("device_shadows")
    with op.batch_alter_table("subtasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subtasks_task_pk_subtasks_target"))
        batch_op.create_index(
            batch_op.f("ix_subtasks_task_pk_subtasks_target"), ["task_pk", "target"], unique=False
        )
        batch_op.drop_column("phase")
        batch_op.drop_column("failures")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("subtask_timeout_s")
