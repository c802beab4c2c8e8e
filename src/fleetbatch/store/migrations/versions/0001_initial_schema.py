"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_meta")),
    )
    op.create_table(
        "projects",
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_projects")),
    )
    op.create_table(
        "access_keys",
        sa.Column("access_key", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("secret_key_enc", sa.LargeBinary(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.project_id"], name=op.f("fk_access_keys_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("access_key", name=op.f("pk_access_keys")),
    )
    with op.batch_alter_table("access_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_access_keys_project_id"), ["project_id"], unique=False)

    op.create_table(
        "apps",
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.Column("throttle_per_min", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.project_id"], name=op.f("fk_apps_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("app_id", name=op.f("pk_apps")),
    )
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_apps_project_id"), ["project_id"], unique=False)

    op.create_table(
        "app_grants",
        sa.Column("owner_app_id", sa.String(length=36), nullable=False),
        sa.Column("grantee_app_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["grantee_app_id"], ["apps.app_id"], name=op.f("fk_app_grants_grantee_app_id_apps")
        ),
        sa.ForeignKeyConstraint(
            ["owner_app_id"], ["apps.app_id"], name=op.f("fk_app_grants_owner_app_id_apps")
        ),
        sa.PrimaryKeyConstraint("owner_app_id", "grantee_app_id", name=op.f("pk_app_grants")),
    )
    op.create_table(
        "device_groups",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=64), nullable=True),
        sa.Column("parent_group_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.app_id"], name=op.f("fk_device_groups_app_id_apps")
        ),
        sa.ForeignKeyConstraint(
            ["parent_group_id"],
            ["device_groups.group_id"],
            name=op.f("fk_device_groups_parent_group_id_device_groups"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.project_id"],
            name=op.f("fk_device_groups_project_id_projects"),
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_device_groups")),
        sa.UniqueConstraint("app_id", "name", name=op.f("uq_device_groups_app_id_name")),
        sa.UniqueConstraint("group_id", name=op.f("uq_device_groups_group_id")),
    )
    with op.batch_alter_table("device_groups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_device_groups_project_id_device_groups_pk"),
            ["project_id", "pk"],
            unique=False,
        )

    op.create_table(
        "products",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("device_type", sa.String(length=32), nullable=False),
        sa.Column("protocol_type", sa.String(length=16), nullable=False),
        sa.Column("data_format", sa.String(length=16), nullable=False),
        sa.Column("manufacturer_id", sa.String(length=128), nullable=True),
        sa.Column("manufacturer_name", sa.String(length=32), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("industry", sa.String(length=64), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("service_capabilities", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.app_id"], name=op.f("fk_products_app_id_apps")),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.project_id"], name=op.f("fk_products_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_products")),
        sa.UniqueConstraint("product_id", name=op.f("uq_products_product_id")),
    )
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f(
                "ix_products_app_id_products_device_type_products_manufacturer_id_products_model"
            ),
            ["app_id", "device_type", "manufacturer_id", "model"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_products_project_id_products_pk"), ["project_id", "pk"], unique=False
        )

    op.create_table(
        "tasks",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_id", sa.String(length=24), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("creator_app_id", sa.String(length=36), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("task_type", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_desc", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("need_confirm", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("targets", sa.Text(), nullable=True),
        sa.Column("targets_filter", sa.Text(), nullable=True),
        sa.Column("selector", sa.Text(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("ext_info", sa.Text(), nullable=True),
        sa.Column("timeout_s", sa.Integer(), nullable=True),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("rate_per_min", sa.Integer(), nullable=True),
        sa.Column("retry_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("retry_interval_s", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_retransmit", sa.Integer(), server_default="0", nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("abort_min_finished", sa.Integer(), nullable=True),
        sa.Column("abort_fail_ratio", sa.Float(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("scheduled_at", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("deadline_at", sa.BigInteger(), nullable=True),
        sa.Column("expand_cursor", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.BigInteger(), nullable=True),
        sa.Column("n_total", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("n_waiting", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("n_processing", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("n_success", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("n_fail", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("n_fail_wait_retry", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("n_timeout", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("n_stopped", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("n_removed", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.app_id"], name=op.f("fk_tasks_app_id_apps")),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.project_id"], name=op.f("fk_tasks_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_tasks")),
        sa.UniqueConstraint("task_id", name=op.f("uq_tasks_task_id")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tasks_app_id_tasks_status"), ["app_id", "status"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_tasks_project_id_tasks_task_type_tasks_pk"),
            ["project_id", "task_type", "pk"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_tasks_status_tasks_lease_until"), ["status", "lease_until"], unique=False
        )

    op.create_table(
        "devices",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("product_id", sa.String(length=36), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("location", sa.String(length=1024), nullable=True),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("gateway_id", sa.String(length=128), nullable=True),
        sa.Column("fw_version", sa.String(length=256), nullable=True),
        sa.Column("sw_version", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("active_at", sa.BigInteger(), nullable=True),
        sa.Column("last_seen_at", sa.BigInteger(), nullable=True),
        sa.Column("status_changed_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["app_id"], ["apps.app_id"], name=op.f("fk_devices_app_id_apps")),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.product_id"], name=op.f("fk_devices_product_id_products")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.project_id"], name=op.f("fk_devices_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_devices")),
        sa.UniqueConstraint("device_id", name=op.f("uq_devices_device_id")),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_devices_app_id_devices_location"), ["app_id", "location"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_devices_app_id_devices_pk"), ["app_id", "pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_devices_product_id_devices_pk"), ["product_id", "pk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_devices_project_id_devices_pk"), ["project_id", "pk"], unique=False
        )

    op.create_table(
        "subtasks",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("device_pk", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=True),
        sa.Column("due_at", sa.BigInteger(), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.BigInteger(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_msg", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["task_pk"], ["tasks.pk"], name=op.f("fk_subtasks_task_pk_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subtasks")),
    )
    with op.batch_alter_table("subtasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subtasks_request_id"), ["request_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_subtasks_task_pk_subtasks_id"), ["task_pk", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_subtasks_task_pk_subtasks_status_subtasks_id"),
            ["task_pk", "status", "id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_subtasks_task_pk_subtasks_target"), ["task_pk", "target"], unique=False
        )

    op.create_table(
        "task_tags",
        sa.Column("task_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tag_name", sa.String(length=128), nullable=False),
        sa.Column("tag_value", sa.String(length=1024), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["task_pk"], ["tasks.pk"], name=op.f("fk_task_tags_task_pk_tasks")),
        sa.PrimaryKeyConstraint("task_pk", "tag_name", name=op.f("pk_task_tags")),
        sa.UniqueConstraint(
            "project_id",
            "tag_name",
            "tag_value",
            name=op.f("uq_task_tags_project_id_tag_name_tag_value"),
        ),
    )
    op.create_table(
        "group_members",
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column(
            "device_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["device_pk"], ["devices.pk"], name=op.f("fk_group_members_device_pk_devices")
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["device_groups.group_id"],
            name=op.f("fk_group_members_group_id_device_groups"),
        ),
        sa.PrimaryKeyConstraint("group_id", "device_pk", name=op.f("pk_group_members")),
    )
    with op.batch_alter_table("group_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_group_members_device_pk"), ["device_pk"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("group_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_group_members_device_pk"))

    op.drop_table("group_members")
    op.drop_table("task_tags")
    with op.batch_alter_table("subtasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subtasks_task_pk_subtasks_target"))
        batch_op.drop_index(batch_op.f("ix_subtasks_task_pk_subtasks_status_subtasks_id"))
        batch_op.drop_index(batch_op.f("ix_subtasks_task_pk_subtasks_id"))
        batch_op.drop_index(batch_op.f("ix_subtasks_request_id"))

    op.drop_table("subtasks")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_project_id_devices_pk"))
        batch_op.drop_index(batch_op.f("ix_devices_product_id_devices_pk"))
        batch_op.drop_index(batch_op.f("ix_devices_app_id_devices_pk"))
        batch_op.drop_index(batch_op.f("ix_devices_app_id_devices_location"))

    op.drop_table("devices")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_status_tasks_lease_until"))
        batch_op.drop_index(batch_op.f("ix_tasks_project_id_tasks_task_type_tasks_pk"))
        batch_op.drop_index(batch_op.f("ix_tasks_app_id_tasks_status"))

    op.drop_table("tasks")
    with op.batch_alter_table("products", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_products_project_id_products_pk"))
        batch_op.drop_index(
            batch_op.f(
                "ix_products_app_id_products_device_type_products_manufacturer_id_products_model"
            )
        )

    op.drop_table("products")
    with op.batch_alter_table("device_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_groups_project_id_device_groups_pk"))

    op.drop_table("device_groups")
    op.drop_table("app_grants")
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_apps_project_id"))

    op.drop_table("apps")
    with op.batch_alter_table("access_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_access_keys_project_id"))

    op.drop_table("access_keys")
    op.drop_table("projects")
    op.drop_table("meta")
