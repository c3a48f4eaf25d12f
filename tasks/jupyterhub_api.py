"""The JupyterHub REST API, over requests: health, version, identity, services, tokens.

Plain functions (no Prefect) so tasks and the CLI share them. Tokens travel only in the
Authorization header; nothing here logs, returns or raises a token value.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from tasks.retry import TransientError

TIMEOUT = 5.0
#: A hub's answers worth retrying (its own 500 is a real error, not retried).
TRANSIENT_STATUS = {429, 502, 503, 504}


class HubApiError(Exception):
    """The hub answered, but not as expected; `status` is the HTTP status, if it was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class TokenRefused(HubApiError):
    """The hub is up but does not accept the token (revoked, wrong or missing)."""


def call(
    method: str,
    url: str,
    *,
    token: str | None = None,
    json: Any = None,
    timeout: float = TIMEOUT,
) -> requests.Response:
    """One HTTP call; transient failures raise `TransientError`, auth failures `TokenRefused`."""
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        response = requests.request(method, url, headers=headers, json=json, timeout=timeout)
    except requests.Timeout:
        raise TransientError(f"{method} {url}: no answer within {timeout:g}s") from None
    except requests.ConnectionError as exc:
        raise TransientError(f"{method} {url}: connection failed ({_why(exc)})") from None
    if response.status_code in TRANSIENT_STATUS:
        raise TransientError(f"{method} {url}: HTTP {response.status_code} {response.reason}")
    if response.status_code in (401, 403):
        raise TokenRefused(
            f"{method} {url}: token refused (HTTP {response.status_code})", response.status_code
        )
    if response.status_code >= 400:
        raise HubApiError(
            f"{method} {url}: HTTP {response.status_code}: {_message(response)}",
            response.status_code,
        )
    return response


def _why(exc: Exception) -> str:
    text = str(exc)
    return "connection refused" if "refused" in text.lower() else text.split(":")[-1].strip()


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message", response.text[:200]))
    except ValueError:
        return response.text[:200]


def timed_health(base_url: str, timeout: float = TIMEOUT) -> float:
    """GET /hub/health; returns latency in ms."""
    start = time.perf_counter()
    call("GET", f"{base_url}/hub/health", timeout=timeout)
    return (time.perf_counter() - start) * 1000


def version(base_url: str) -> str:
    """GET /hub/api: the JupyterHub version (no token needed)."""
    return str(call("GET", f"{base_url}/hub/api").json()["version"])


def whoami(base_url: str, token: str) -> dict[str, Any]:
    """GET /hub/api/user: who the token belongs to."""
    return dict(call("GET", f"{base_url}/hub/api/user", token=token).json())


def issue_token(
    base_url: str, token: str, user: str, scopes: list[str], expires_in: int, note: str
) -> tuple[str, str]:
    """POST /hub/api/users/<user>/tokens: a new token of `user` with `scopes` (the hub
    refuses any the user does not hold), expiring in `expires_in` seconds.
    Returns (token id, token)."""
    model = call(
        "POST",
        f"{base_url}/hub/api/users/{user}/tokens",
        token=token,
        json={"expires_in": expires_in, "note": note, "scopes": scopes},
    ).json()
    return str(model["id"]), str(model["token"])


def list_tokens(base_url: str, token: str, user: str) -> list[str]:
    """The ids of `user`'s API tokens."""
    listing = call("GET", f"{base_url}/hub/api/users/{user}/tokens", token=token).json()
    return [str(t["id"]) for t in listing.get("api_tokens", [])]


def revoke_token(base_url: str, token: str, user: str, token_id: str) -> None:
    """DELETE /hub/api/users/<user>/tokens/<id>: the token is refused from then on."""
    call("DELETE", f"{base_url}/hub/api/users/{user}/tokens/{token_id}", token=token)


def revoke_user_tokens(base_url: str, token: str, user: str) -> int:
    """Delete every API token of `user`; returns how many were revoked.

    Oldest first, so a user revoking its own tokens loses the calling one last.
    """
    ids = sorted(list_tokens(base_url, token, user), key=_numeric)
    for token_id in ids:
        revoke_token(base_url, token, user, token_id)
    return len(ids)


def _numeric(token_id: str | int) -> int:
    """Token ids look like 'a12'; order them by their number."""
    digits = "".join(ch for ch in str(token_id) if ch.isdigit())
    return int(digits or 0)
