"""All tables, as SQLAlchemy Core `Table` objects. Changed only together with a migration.

Conventions: times are epoch milliseconds (BIGINT) in UTC, the same on SQLite and
PostgreSQL; JSON documents are TEXT holding JSON; integer surrogate keys (`pk`/`id`) keep
the million-row tables (devices, subtasks) and their indexes compact, while the public
ids (device_id, task_id) are unique text columns.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

from fleetbatch.domain.states import SubtaskStatus, counter_column

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_N_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite makes only an INTEGER PRIMARY KEY an alias of the rowid (and so auto-increment).
RowId = BigInteger().with_variant(Integer(), "sqlite")

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("project_id", String(32), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

apps = Table(
    "apps",
    metadata,
    Column("app_id", String(36), primary_key=True),
    Column("project_id", ForeignKey("projects.project_id"), nullable=False, index=True),
    Column("name", String(256), nullable=False),
    Column("secret_hash", String(128), nullable=False),
    Column("throttle_per_min", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

access_keys = Table(
    "access_keys",
    metadata,
    Column("access_key", String(64), primary_key=True),
    Column("project_id", ForeignKey("projects.project_id"), nullable=False, index=True),
    Column("secret_key_enc", LargeBinary, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

# `grantee_app_id` may act for `owner_app_id` (the legacy `appId` parameter).
app_grants = Table(
    "app_grants",
    metadata,
    Column("owner_app_id", ForeignKey("apps.app_id"), primary_key=True),
    Column("grantee_app_id", ForeignKey("apps.app_id"), primary_key=True),
    Column("created_at", BigInteger, nullable=False),
)

products = Table(
    "products",
    metadata,
    Column("pk", RowId, primary_key=True, autoincrement=True),
    Column("product_id", String(36), nullable=False, unique=True),
    Column("project_id", ForeignKey("projects.project_id"), nullable=False),
    Column("app_id", ForeignKey("apps.app_id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("device_type", String(32), nullable=False),
    Column("protocol_type", String(16), nullable=False),
    Column("data_format", String(16), nullable=False),
    Column("manufacturer_id", String(128)),
    Column("manufacturer_name", String(32)),
    Column("model", String(128)),
    Column("industry", String(64)),
    Column("description", Text),
    Column("service_capabilities", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "project_id", "pk"),
    # the legacy DeviceType selector: deviceType + manufacturerId + model within an app
    Index(None, "app_id", "device_type", "manufacturer_id", "model"),
)

devices = Table(
    "devices",
    metadata,
    Column("pk", RowId, primary_key=True, autoincrement=True),
    Column("device_id", String(128), nullable=False, unique=True),
    Column("project_id", ForeignKey("projects.project_id"), nullable=False),
    Column("app_id", ForeignKey("apps.app_id"), nullable=False),
    Column("product_id", ForeignKey("products.product_id"), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("description", Text),
    Column("secret_enc", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),
    Column("location", String(1024)),
    Column("tags", Text, nullable=False),
    Column("gateway_id", String(128)),
    Column("fw_version", String(256)),
    Column("sw_version", String(256)),
    Column("created_at", BigInteger, nullable=False),
    Column("active_at", BigInteger),
    Column("last_seen_at", BigInteger),
    Column("status_changed_at", BigInteger),
    # the spare secret a device may also connect with (IoTDA's SECONDARY secret)
    Column("secondary_secret_enc", LargeBinary),
    Column("extension_info", Text),  # JSON object, the caller's own (≤ 1 KB)
    Index(None, "project_id", "pk"),
    Index(None, "app_id", "pk"),
    Index(None, "product_id", "pk"),
    Index(None, "app_id", "location"),
    # "has this device children?" before a delete, one device or a batch of them
    Index(None, "gateway_id"),
)

device_groups = Table(
    "device_groups",
    metadata,
    Column("pk", RowId, primary_key=True, autoincrement=True),
    Column("group_id", String(36), nullable=False, unique=True),
    Column("project_id", ForeignKey("projects.project_id"), nullable=False),
    Column("app_id", ForeignKey("apps.app_id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("description", String(64)),
    Column("parent_group_id", ForeignKey("device_groups.group_id")),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("app_id", "name"),
    Index(None, "project_id", "pk"),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", ForeignKey("device_groups.group_id"), primary_key=True),
    Column("device_pk", ForeignKey("devices.pk"), primary_key=True),
    Index(None, "device_pk"),
)

# One row per batch task; the counters always equal the per-status counts of its subtasks
# (they change in the same transaction), so progress is read from this row alone.
tasks = Table(
    "tasks",
    metadata,
    Column("pk", RowId, primary_key=True, autoincrement=True),
    Column("task_id", String(24), nullable=False, unique=True),
    Column("project_id", ForeignKey("projects.project_id"), nullable=False),
    Column("app_id", ForeignKey("apps.app_id"), nullable=False),
    Column("creator_app_id", String(36)),
    Column("name", String(256), nullable=False),
    Column("task_type", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_desc", Text),
    Column("source", String(16), nullable=False),
    Column("mode", String(16)),
    Column("need_confirm", Boolean, nullable=False, server_default=false()),
    Column("document", Text, nullable=False),
    Column("targets", Text),
    Column("targets_filter", Text),
    Column("selector", Text, nullable=False),
    Column("policy", Text, nullable=False),
    Column("ext_info", Text),
    Column("timeout_s", Integer),
    Column("subtask_timeout_s", Float),
    Column("max_concurrency", Integer),
    Column("rate_per_min", Integer),
    Column("retry_count", Integer, nullable=False, server_default="0"),
    Column("retry_interval_s", Integer, nullable=False, server_default="0"),
    Column("max_retransmit", Integer, nullable=False, server_default="0"),
    Column("callback_url", Text),
    Column("abort_min_finished", Integer),
    Column("abort_fail_ratio", Float),
    Column("created_at", BigInteger, nullable=False),
    Column("scheduled_at", BigInteger),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Column("deadline_at", BigInteger),
    # expansion progress: the selector is expanded in chunks that resume after a crash
    Column("expand_cursor", Text),
    # lease: which engine worker drives this task, and until when its claim holds
    Column("claimed_by", String(64)),
    Column("lease_until", BigInteger),
    Column("n_total", BigInteger, nullable=False, server_default="0"),
    *(
        Column(counter_column(status), BigInteger, nullable=False, server_default="0")
        for status in SubtaskStatus
    ),
    Column("n_removed", BigInteger, nullable=False, server_default="0"),
    Index(None, "project_id", "task_type", "pk"),
    Index(None, "app_id", "status"),
    Index(None, "status", "lease_until"),
)

# Tags of legacy batch tasks: a (name, value) pair belongs to one task in a project.
task_tags = Table(
    "task_tags",
    metadata,
    Column("task_pk", ForeignKey("tasks.pk"), primary_key=True),
    Column("tag_name", String(128), primary_key=True),
    Column("tag_value", String(1024), nullable=False),
    Column("project_id", String(32), nullable=False),
    UniqueConstraint("project_id", "tag_name", "tag_value"),
)

# One row per (task, device): the subtask id rendered as 24 hex is the v5 record id and
# grows with creation order, so marker paging by descending id is an index range scan.
subtasks = Table(
    "subtasks",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("task_pk", ForeignKey("tasks.pk"), nullable=False),
    Column("target", String(128), nullable=False),
    # null when the target named no registered device (the subtask then fails)
    Column("device_pk", BigInteger),
    Column("status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, server_default="0"),
    # failed attempts so far; the retry budget is spent on these, not on crash re-dispatches
    Column("failures", Integer, nullable=False, server_default="0"),
    # the finer life of some types (async commands: PENDING, SENT, DELIVERED, ...)
    Column("phase", String(16)),
    Column("request_id", String(100)),
    Column("due_at", BigInteger),
    Column("claimed_by", String(64)),
    Column("lease_until", BigInteger),
    Column("output", Text),
    Column("error_code", String(64)),
    Column("error_msg", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Index(None, "task_pk", "status", "id"),
    # one subtask per device and task
    Index(None, "task_pk", "target", unique=True),
    Index(None, "task_pk", "id"),
    Index(None, "request_id"),
)


# The desired and reported state of one service of one device (IoTDA's device shadow).
device_shadows = Table(
    "device_shadows",
    metadata,
    Column("device_pk", ForeignKey("devices.pk", ondelete="CASCADE"), primary_key=True),
    Column("service_id", String(64), primary_key=True),
    Column("desired", Text),
    Column("desired_at", BigInteger),
    Column("reported", Text),
    Column("reported_at", BigInteger),
    Column("version", BigInteger, nullable=False, server_default="0"),
)

# Device lists uploaded for batch tasks (v5 batch task files), parsed once at upload: a task
# naming the file as its `document_source` takes the ids from here.
batch_task_files = Table(
    "batch_task_files",
    metadata,
    Column("file_id", String(24), primary_key=True),
    Column("project_id", ForeignKey("projects.project_id"), nullable=False),
    Column("file_name", String(255), nullable=False),
    Column("device_ids", Text, nullable=False),  # JSON list, in the file's row order
    Column("row_count", Integer, nullable=False),
    Column("uploaded_at", BigInteger, nullable=False),
    Index(None, "project_id"),
)

# Engine workers alive: each renews its lease; the subtasks a dead worker had in flight
# are handed out again once its lease has run out.
engine_workers = Table(
    "engine_workers",
    metadata,
    Column("worker_id", String(64), primary_key=True),
    Column("started_at", BigInteger, nullable=False),
    Column("lease_until", BigInteger, nullable=False),
)

# Legacy northbound tokens (access and refresh), stored as SHA-256 of the token: a token is
# 256 random bits, so an unsalted hash can be looked up and still reveals nothing.
legacy_tokens = Table(
    "legacy_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("kind", String(8), nullable=False),  # access | refresh
    Column("app_id", ForeignKey("apps.app_id"), nullable=False),
    # a refresh token names the access token issued with it (logout ends both)
    Column("pair_hash", String(64)),
    Column("expires_at", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "expires_at"),
    Index(None, "pair_hash"),
)

# Admitted calls per app and one-second slot (`window_start`: the slot's start), summed over
# the last 60 s for the sliding-window call limit; in the store so every API process shares
# one budget.
api_calls = Table(
    "api_calls",
    metadata,
    Column("app_id", String(36), primary_key=True),
    Column("window_start", BigInteger, primary_key=True),
    Column("calls", Integer, nullable=False),
)

# Notifications to applications' URLs (legacy command callbacks, later v5 pushes), written
# in the transaction of the change they report and delivered at least once by the outbox.
outbox = Table(
    "outbox",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("url", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("due_at", BigInteger, nullable=False),
    Column("claimed_by", String(64)),
    Column("lease_until", BigInteger),
    Column("last_error", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger),
    Index(None, "delivered_at", "due_at"),
)

# A request to cancel a device's pending commands (legacy deviceCommandCancelTasks): done at
# once, kept so it can be listed; `command_ids` is the JSON list of the commands canceled.
command_cancel_tasks = Table(
    "command_cancel_tasks",
    metadata,
    Column("task_id", String(24), primary_key=True),
    Column("app_id", ForeignKey("apps.app_id"), nullable=False),
    Column("device_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("command_ids", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index(None, "app_id", "created_at"),
)
