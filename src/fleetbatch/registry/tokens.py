"""Legacy northbound sessions: tokens issued at login, checked and throttled on every call.

Tokens are random and only their hashes are stored, so they work across processes and a
database dump yields none. Several live tokens per app are allowed, each with its own
expiry (spec: oceanconnect-legacy §1.1, design choice). Throttling counts every admitted
call in the store, per app and one-second slot, and admits a call only while fewer than
the app's limit count in the last 60 s (a sliding window), so all API processes share one
budget and no 60-second span holds more than the limit.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.errors import AuthFailed, LimitExceeded
from fleetbatch.domain.registry import App
from fleetbatch.registry.common import Service, require_app
from fleetbatch.store import apps as app_rows
from fleetbatch.store import tokens as token_rows
from fleetbatch.vault import hash_token, verify_secret

ACCESS_TTL_S = 3600
REFRESH_TTL_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """An access token and the refresh token that renews it."""

    access_token: str
    refresh_token: str
    expires_in_s: int = ACCESS_TTL_S


class TokenExpired(AuthFailed):
    """The token is unknown, expired, logged out, or belongs to another app."""


class TokenService(Service):
    """Login, refresh, logout, and the check (with throttling) in front of every call."""

    async def login(self, app_id: str, secret: str) -> IssuedTokens:
        """New tokens for an app and its secret; AuthFailed otherwise."""
        now = self.clock.now_ms()
        async with self.store.write() as conn:
            await self._check_secret(conn, app_id, secret)
            await token_rows.delete_expired(conn, now)
            return await self._issue(conn, app_id, now)

    async def refresh(self, app_id: str, secret: str, refresh_token: str) -> IssuedTokens:
        """Trade a live refresh token (with the app's secret) for new tokens; it is spent."""
        now = self.clock.now_ms()
        async with self.store.write() as conn:
            await self._check_secret(conn, app_id, secret)
            refresh_hash = hash_token(refresh_token)
            found = await token_rows.live_token_app(conn, refresh_hash, token_rows.REFRESH, now)
            if found is None or found[0] != app_id:
                raise TokenExpired("the refresh token is invalid or expired")
            await token_rows.delete_token(conn, refresh_hash)
            return await self._issue(conn, app_id, now)

    async def logout(self, access_token: str) -> bool:
        """End an access token and its refresh token; whether it was known."""
        async with self.store.write() as conn:
            return await token_rows.delete_access_with_refresh(conn, hash_token(access_token))

    async def admit(self, app_key: str, access_token: str) -> App:
        """The calling app when the token is live and its own; the call is counted.

        Raises TokenExpired for a bad token, LimitExceeded when the app's last 60 s already
        hold `throttle_per_min` admitted calls (this one is then not counted).
        """
        now = self.clock.now_ms()
        async with self.store.write() as conn:
            found = await token_rows.live_token_app(
                conn, hash_token(access_token), token_rows.ACCESS, now
            )
            if found is None or found[0] != app_key:
                raise TokenExpired("app_key or access token is invalid")
            app = await require_app(conn, app_key)
            admitted = await token_rows.admit_call(conn, app_key, now, app.throttle_per_min)
        if not admitted:
            raise LimitExceeded(
                f"app {app_key} made {app.throttle_per_min} calls in the last 60 s, its limit"
            )
        return app

    async def _check_secret(self, conn: AsyncConnection, app_id: str, secret: str) -> None:
        stored = await app_rows.get_app_secret_hash(conn, app_id)
        if stored is None or not verify_secret(secret, stored):
            raise AuthFailed("app id or secret is not right")

    async def _issue(self, conn: AsyncConnection, app_id: str, now: int) -> IssuedTokens:
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        access_hash = hash_token(access)
        for token_hash, kind, ttl_s, pair in (
            (access_hash, token_rows.ACCESS, ACCESS_TTL_S, None),
            (hash_token(refresh), token_rows.REFRESH, REFRESH_TTL_S, access_hash),
        ):
            await token_rows.insert_token(
                conn,
                token_hash,
                kind,
                app_id,
                now + ttl_s * 1000,
                now,
                pair_hash=pair,
            )
        return IssuedTokens(access, refresh)
