"""The errors fleetbatch raises on purpose: one root, a few families by cause.

Each API dialect maps these families to its own wire codes at the edge; code inside
just raises them with the fields a dialect needs (which input, which resource).
"""

from __future__ import annotations


class FleetbatchError(Exception):
    """Base of every error fleetbatch raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(FleetbatchError):
    """A request field is missing or out of its documented range; nothing was changed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(FleetbatchError):
    """The named resource does not exist (or is not visible to the caller)."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} does not exist")
        self.kind = kind
        self.key = key


class Conflict(FleetbatchError):
    """The resource is in a state that forbids the operation; nothing was changed."""


class AlreadyExists(Conflict):
    """A resource with the same unique key already exists."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} already exists")
        self.kind = kind
        self.key = key


class LimitExceeded(FleetbatchError):
    """A quota or rate would be exceeded; nothing was changed."""


class AuthFailed(FleetbatchError):
    """Credentials are missing, wrong, expired, or do not grant the operation."""


class Unavailable(FleetbatchError):
    """A component the operation needs (store, device transport) cannot serve it now."""
