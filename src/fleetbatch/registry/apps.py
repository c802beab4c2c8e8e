"""Projects, apps and their credentials: app secrets, AK/SK pairs, grants between apps."""

from __future__ import annotations

from typing import Any

from fleetbatch.domain.errors import AuthFailed, InvalidInput, NotFound
from fleetbatch.domain.ids import (
    new_access_key,
    new_app_id,
    new_project_id,
    new_secret,
)
from fleetbatch.domain.registry import (
    App,
    AppCredentials,
    Project,
    check_text,
)
from fleetbatch.registry.common import (
    Service,
    require_app,
)
from fleetbatch.store import apps as app_rows
from fleetbatch.vault import hash_secret, verify_secret


class AppService(Service):
    """Projects and apps, the credentials they authenticate with, and who may act for whom."""

    def __init__(self, *args: Any, default_throttle: int = 100, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_throttle = default_throttle

    async def create(
        self, name: str, *, project_id: str | None = None, throttle_per_min: int | None = None
    ) -> AppCredentials:
        """Create an app, in a new project unless one is named, with all its credentials.

        The app secret (legacy login) and the AK/SK pair (v5 signing) are returned once;
        the store keeps the secret's hash and the SK encrypted.
        """
        check_text("name", name, 1, 256)
        throttle = self.default_throttle if throttle_per_min is None else throttle_per_min
        if throttle < 1:
            raise InvalidInput("throttle_per_min", "must be at least 1")
        now = self.clock.now_ms()
        secret, access_key, secret_key = new_secret(), new_access_key(), new_secret(40)
        async with self.store.write() as conn:
            if project_id is None:
                project_id = new_project_id()
                await app_rows.insert_project(conn, Project(project_id, name, now))
            elif await app_rows.get_project(conn, project_id) is None:
                raise NotFound("project", project_id)
            app = App(new_app_id(), project_id, name, throttle, now)
            await app_rows.insert_app(conn, app, hash_secret(secret))
            await app_rows.insert_access_key(
                conn, access_key, project_id, self.vault.encrypt(secret_key), now
            )
        return AppCredentials(project_id, app.app_id, secret, access_key, secret_key)

    async def get(self, app_id: str) -> App:
        """The app; NotFound otherwise."""
        async with self.store.read() as conn:
            return await require_app(conn, app_id)

    async def get_project(self, project_id: str) -> Project:
        """The project; NotFound otherwise."""
        async with self.store.read() as conn:
            project = await app_rows.get_project(conn, project_id)
        if project is None:
            raise NotFound("project", project_id)
        return project

    async def list_all(self, project_id: str | None = None) -> list[App]:
        """Every app, or those of one project, oldest first."""
        async with self.store.read() as conn:
            return await app_rows.list_apps(conn, project_id)

    async def verify_secret(self, app_id: str, secret: str) -> App:
        """The app when `secret` is its secret; AuthFailed otherwise (unknown app included)."""
        async with self.store.read() as conn:
            stored = await app_rows.get_app_secret_hash(conn, app_id)
            if stored is None or not verify_secret(secret, stored):
                raise AuthFailed("app id or secret is not right")
            return await require_app(conn, app_id)

    async def secret_key_for(self, access_key: str) -> tuple[str, str]:
        """(project_id, SK) for an enabled access key; AuthFailed for any other key."""
        async with self.store.read() as conn:
            found = await app_rows.get_access_key(conn, access_key)
        if found is None:
            raise AuthFailed("unknown access key")
        project_id, secret_key_enc = found
        return project_id, self.vault.decrypt(secret_key_enc)

    async def grant(self, owner_app_id: str, grantee_app_id: str) -> None:
        """Let `grantee_app_id` act for `owner_app_id` (the legacy `appId` parameter)."""
        if owner_app_id == grantee_app_id:
            raise InvalidInput("appId", "an app always acts for itself")
        async with self.store.write() as conn:
            await require_app(conn, owner_app_id)
            await require_app(conn, grantee_app_id)
            await app_rows.insert_grant(conn, owner_app_id, grantee_app_id, self.clock.now_ms())

    async def revoke(self, owner_app_id: str, grantee_app_id: str) -> None:
        """Withdraw a grant; NotFound when there was none."""
        async with self.store.write() as conn:
            if not await app_rows.delete_grant(conn, owner_app_id, grantee_app_id):
                raise NotFound("grant", f"{owner_app_id}->{grantee_app_id}")

    async def may_act_for(self, grantee_app_id: str, owner_app_id: str) -> bool:
        """True when the grantee is the owner or was authorized by it."""
        if grantee_app_id == owner_app_id:
            return True
        async with self.store.read() as conn:
            return await app_rows.has_grant(conn, owner_app_id, grantee_app_id)
