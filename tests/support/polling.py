"""The one polling helper of the suite: wait for a condition with a deadline
instead of sleeping a fixed time (:func:`eventually`; :func:`eventually_sync`
is the same for code outside an event loop, such as process fixtures)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    condition: Callable[[], Awaitable[Any] | Any],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll ``condition()`` (sync or async) until it returns something truthy, and
    return that; fail after ``timeout`` seconds, naming ``message`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout:g} s (last: {result!r})")
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], Any],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """:func:`eventually` blocking the calling thread, for a synchronous ``condition``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout:g} s (last: {result!r})")
        time.sleep(interval)
