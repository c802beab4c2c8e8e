"""v5 dialect: batch task files (uploaded device lists)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_task_files",
        sa.Column("file_id", sa.String(length=24), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("device_ids", sa.Text(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("uploaded_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.project_id"],
            name=op.f("fk_batch_task_files_project_id_projects"),
        ),
        sa.PrimaryKeyConstraint("file_id", name=op.f("pk_batch_task_files")),
    )
    with op.batch_alter_table("batch_task_files", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_batch_task_files_project_id"), ["project_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("batch_task_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_task_files_project_id"))
    op.drop_table("batch_task_files")
