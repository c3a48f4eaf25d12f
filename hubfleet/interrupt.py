"""Operations run from the CLI answer Ctrl-C and SIGTERM.

The first signal cancels the operation: Python unwinds it, so its locks are released and
its own cleanup runs (a deploy whose new config did not come up restores the previous
one), and its run is recorded as Cancelled, not Crashed. If that has not finished within
GRACE seconds (for instance the Prefect server is gone, so releasing a lock cannot be
acknowledged), or on a second signal, the process exits at once with 130: a lock it could
not release frees itself when its lease runs out (tasks/locks.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hubfleet.errors import HubfleetError

GRACE = 8.0
T = TypeVar("T")


class Interrupted(HubfleetError):
    """The operation was stopped by a signal; its run is marked Cancelled."""


def _hard_exit(why: str) -> None:
    sys.stderr.write(f"\n{why}; exiting now (a lock still held frees itself with its lease)\n")
    sys.stderr.flush()
    os._exit(130)


def run_interruptible(main: Callable[[], Awaitable[T]]) -> T:
    """Run `main()` in an event loop; SIGINT/SIGTERM cancel it (see the module doc)."""
    received: list[str] = []

    async def runner() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if received:
                _hard_exit(f"second {name}")
            received.append(name)
            sys.stderr.write(f"\n{name}: cancelling the operation (again to exit at once)\n")
            timer = threading.Timer(GRACE, _hard_exit, [f"{name}: not unwound in {GRACE:g}s"])
            timer.daemon = True
            timer.start()
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        return await main()

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        if not received:
            raise
        raise Interrupted(
            f"stopped by {received[0]}: the run is marked Cancelled and its locks are released"
        ) from None


class _UserErrorsWithoutTraceback(logging.Filter):
    """A user error (HubfleetError, LookupError) is logged by Prefect's engine with its
    traceback; on the terminal it is one plain line (the CLI prints the message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (HubfleetError, LookupError)):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_user_errors() -> None:
    quiet = _UserErrorsWithoutTraceback()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _UserErrorsWithoutTraceback) for f in handler.filters):
                handler.addFilter(quiet)


async def _mark_cancelled(_flow: Any, flow_run: Any, state: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    async with get_client() as client:
        await client.set_flow_run_state(
            flow_run.id, Cancelled(message="stopped by a signal to the CLI"), force=True
        )


def cancellable(flow: Any) -> Any:
    """`flow`, whose run is recorded Cancelled when a signal stops it (Prefect alone would
    record Crashed)."""
    return flow.with_options(on_crashed=[*flow.on_crashed_hooks, _mark_cancelled])


def run_flow_interruptible(flow: Any, **params: Any) -> Any:
    """Call a Prefect flow in this process; a signal cancels it and marks its run Cancelled
    (rather than hang retrying a server that is gone)."""
    _quiet_user_errors()
    return run_interruptible(lambda: cancellable(flow)(**params))
