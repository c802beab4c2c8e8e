"""Projects, apps, access keys and app-to-app grants."""

from __future__ import annotations

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.registry import App, Project
from fleetbatch.store.schema import access_keys, app_grants, apps, projects


async def insert_project(conn: AsyncConnection, project: Project) -> None:
    """Add a project."""
    await conn.execute(
        projects.insert().values(
            project_id=project.project_id, name=project.name, created_at=project.created_at_ms
        )
    )


async def get_project(conn: AsyncConnection, project_id: str) -> Project | None:
    """The project, or None."""
    row = (await conn.execute(select(projects).where(projects.c.project_id == project_id))).first()
    if row is None:
        return None
    return Project(project_id=row.project_id, name=row.name, created_at_ms=row.created_at)


async def insert_app(conn: AsyncConnection, app: App, secret_hash: str) -> None:
    """Add an app with the hash of its secret."""
    await conn.execute(
        apps.insert().values(
            app_id=app.app_id,
            project_id=app.project_id,
            name=app.name,
            secret_hash=secret_hash,
            throttle_per_min=app.throttle_per_min,
            created_at=app.created_at_ms,
        )
    )


def _app(row: Row[tuple[object, ...]]) -> App:
    m = row._mapping
    return App(
        app_id=m["app_id"],
        project_id=m["project_id"],
        name=m["name"],
        throttle_per_min=m["throttle_per_min"],
        created_at_ms=m["created_at"],
    )


async def get_app(conn: AsyncConnection, app_id: str) -> App | None:
    """The app, or None."""
    row = (await conn.execute(select(apps).where(apps.c.app_id == app_id))).first()
    return None if row is None else _app(row)


async def get_app_secret_hash(conn: AsyncConnection, app_id: str) -> str | None:
    """The stored hash of the app's secret, or None for an unknown app."""
    query = select(apps.c.secret_hash).where(apps.c.app_id == app_id)
    return (await conn.execute(query)).scalar()


async def list_apps(conn: AsyncConnection, project_id: str | None = None) -> list[App]:
    """Apps, oldest first, optionally of one project."""
    query = select(apps).order_by(apps.c.created_at, apps.c.app_id)
    if project_id is not None:
        query = query.where(apps.c.project_id == project_id)
    return [_app(row) for row in (await conn.execute(query)).all()]


async def insert_access_key(
    conn: AsyncConnection, access_key: str, project_id: str, secret_key_enc: bytes, now_ms: int
) -> None:
    """Add an AK with its encrypted SK."""
    await conn.execute(
        access_keys.insert().values(
            access_key=access_key,
            project_id=project_id,
            secret_key_enc=secret_key_enc,
            enabled=True,
            created_at=now_ms,
        )
    )


async def get_access_key(conn: AsyncConnection, access_key: str) -> tuple[str, bytes] | None:
    """(project_id, encrypted SK) of an enabled AK, or None."""
    query = select(access_keys.c.project_id, access_keys.c.secret_key_enc).where(
        access_keys.c.access_key == access_key, access_keys.c.enabled.is_(True)
    )
    row = (await conn.execute(query)).first()
    return None if row is None else (row.project_id, row.secret_key_enc)


async def insert_grant(conn: AsyncConnection, owner: str, grantee: str, now_ms: int) -> bool:
    """Let `grantee` act for `owner`; False when the grant already existed."""
    exists = await has_grant(conn, owner, grantee)
    if not exists:
        await conn.execute(
            app_grants.insert().values(
                owner_app_id=owner, grantee_app_id=grantee, created_at=now_ms
            )
        )
    return not exists


async def delete_grant(conn: AsyncConnection, owner: str, grantee: str) -> bool:
    """Withdraw a grant; False when there was none."""
    result = await conn.execute(
        app_grants.delete().where(
            app_grants.c.owner_app_id == owner, app_grants.c.grantee_app_id == grantee
        )
    )
    return result.rowcount == 1


async def has_grant(conn: AsyncConnection, owner: str, grantee: str) -> bool:
    """True when `grantee` may act for `owner`."""
    query = select(app_grants.c.owner_app_id).where(
        app_grants.c.owner_app_id == owner, app_grants.c.grantee_app_id == grantee
    )
    return (await conn.execute(query)).first() is not None


async def lock_app(conn: AsyncConnection, app_id: str) -> None:
    """Serialise an app's writers until the transaction ends (PostgreSQL row lock).

    SQLite needs none: a write transaction there holds the single writer lock already.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(select(apps.c.app_id).where(apps.c.app_id == app_id).with_for_update())
