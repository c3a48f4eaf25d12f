"""Which failures are worth retrying: transient ones only, never a validation error."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff


class TransientError(Exception):
    """A failure that may go away by itself: a refused connection, a timeout, a 503."""


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for Prefect tasks: retry only `TransientError`s."""
    return isinstance(state.data, TransientError)


def transient_retries(retries: int = 3, backoff: float = 1.0) -> dict[str, Any]:
    """Task options: exponential backoff with jitter, on transient errors only."""
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=backoff),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": is_transient,
    }
