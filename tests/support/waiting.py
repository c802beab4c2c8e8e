"""The only way tests wait: poll a condition under a deadline, never a bare sleep.

    await wait_until(lambda: counts.success == 100, timeout_s=5, message="all succeeded")

The predicate may be a plain function or return an awaitable (an `async def` or a lambda
calling one). Its first truthy result is returned, so a wait can also fetch a value.
On the deadline an `AssertionError` carries `message`, so the test fails, never hangs.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL_S = 0.01

Message = str | Callable[[], str]


def _render(message: Message, timeout_s: float) -> str:
    text = message() if callable(message) else message
    return f"{text} (not met within {timeout_s} s)"


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    timeout_s: float,
    interval_s: float = DEFAULT_INTERVAL_S,
    message: Message = "condition not met",
) -> T:
    """Poll `predicate` every `interval_s` until it returns something truthy; return that.

    Raises AssertionError with `message` (a string, or a function building one at the
    deadline, e.g. to show the last state) when `timeout_s` passes first. The predicate
    is always tried at least once, and once more at the deadline.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        expired = loop.time() >= deadline
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if expired:
            raise AssertionError(_render(message, timeout_s))
        await asyncio.sleep(min(interval_s, max(deadline - loop.time(), 0.0)))


def wait_until_sync(
    predicate: Callable[[], T],
    *,
    timeout_s: float,
    interval_s: float = DEFAULT_INTERVAL_S,
    message: Message = "condition not met",
) -> T:
    """The blocking twin of `wait_until`, for sync fixtures and helpers (never in async code)."""
    deadline = time.monotonic() + timeout_s
    while True:
        expired = time.monotonic() >= deadline
        result = predicate()
        if result:
            return result
        if expired:
            raise AssertionError(_render(message, timeout_s))
        time.sleep(min(interval_s, max(deadline - time.monotonic(), 0.0)))
