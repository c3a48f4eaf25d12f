"""Waiting in tests: poll until something is true, or fail saying what never happened.

Every wait in the suite has a bound; a test that waits fails after `timeout` seconds with
"timed out after Ns waiting for <what>", never hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.5) -> T:
    """Call `check` every `every` s until it returns something truthy, and return that;
    AssertionError naming `what` once `timeout` s have passed (checked once more at the end)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


async def await_for(
    what: str, check: Callable[[], Awaitable[T | None]], timeout: float, every: float = 0.5
) -> T:
    """`wait_for` for an async `check`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(every)
