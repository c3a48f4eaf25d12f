"""Reading the Prefect run history in tests: newest first, filtered by the server.

A session's test server holds thousands of artifacts and logs; an unfiltered, unsorted
`read_artifacts(limit=200)` returns some 200 of them, not the ones a test just made. The
server serves at most 200 per request, so these page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

PAGE = 200  # the server's maximum


async def _paged(read: Callable[[int, int], Awaitable[list[Any]]], limit: int) -> list[Any]:
    found: list[Any] = []
    while len(found) < limit:
        page = await read(min(PAGE, limit - len(found)), len(found))
        found.extend(page)
        if len(page) < PAGE:
            break
    return found


async def artifacts(
    key: str | None = None, prefix: str | None = None, limit: int = PAGE
) -> list[Any]:
    """The newest artifacts whose key is `key`, or starts with `prefix` (or any, if neither)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    flt = None
    if key is not None:
        flt = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    elif prefix is not None:
        flt = ArtifactFilter(key=ArtifactFilterKey(like_=prefix))
    async with get_client() as client:

        async def read(n: int, offset: int) -> list[Any]:
            return await client.read_artifacts(
                artifact_filter=flt, sort=ArtifactSort.CREATED_DESC, limit=n, offset=offset
            )

        found = await _paged(read, limit)
    return [a for a in found if prefix is None or (a.key or "").startswith(prefix)]


async def logs(limit: int = PAGE) -> list[Any]:
    """The newest log lines of any run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter
    from prefect.client.schemas.sorting import LogSort

    async with get_client() as client:

        async def read(n: int, offset: int) -> list[Any]:
            return await client.read_logs(
                LogFilter(), limit=n, offset=offset, sort=LogSort.TIMESTAMP_DESC
            )

        return await _paged(read, limit)
