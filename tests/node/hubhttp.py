"""Small HTTP helpers for tests that talk to a hub on the real node (through a port-forward
on 127.0.0.1 or at a pod's IP on the node's bridge).

urllib is built without proxy handlers, so no proxy setting of the environment applies and
only local addresses are ever contacted. Redirects are never followed: a login answers 302
and a page that wants a login redirects to it; the tests look at exactly that. Tokens and
cookies travel only in headers and are never printed.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie
from typing import Any, TypeVar

from waiting import wait_for

T = TypeVar("T")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx comes back as an HTTPError, which call() returns as is


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def request(
    url: str,
    token: str | None = None,
    method: str = "GET",
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, list[str]], bytes]:
    """One request; (status, headers (name -> values, lower-case names), body). HTTP
    errors and redirects are answers here, not exceptions."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", f"token {token}")
    try:
        with OPENER.open(req, timeout=timeout) as resp:
            return resp.status, _headers(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, _headers(e.headers), e.read()


def _headers(message: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in message.items():
        out.setdefault(name.lower(), []).append(value)
    return out


def call(
    url: str, token: str | None = None, method: str = "GET", timeout: float = 30
) -> tuple[int, bytes]:
    """(status, body) of one request with an optional API token."""
    status, _, body = request(url, token, method, timeout=timeout)
    return status, body


def server_ready(api: str, token: str, user: str, timeout: float = 300) -> None:
    """Start `user`'s server (if not running) and wait until the hub says it is ready."""
    status, body = call(f"{api}/users/{user}/server", token, "POST")
    assert status in (201, 202, 400), body[-500:]  # 400: already running
    last = b""

    def ready() -> bool:
        nonlocal last
        status, last = call(f"{api}/users/{user}", token)
        server = json.loads(last).get("servers", {}).get("", {}) if status == 200 else {}
        return bool(server.get("ready"))

    try:
        wait_for(f"{user}'s server ready", ready, timeout, every=2)
    except AssertionError as e:
        raise AssertionError(f"{e}: {last[-500:]!r}") from None


def stop_server(api: str, token: str, user: str, timeout: float = 120) -> None:
    """Stop `user`'s server and wait until the hub lists none."""
    call(f"{api}/users/{user}/server", token, "DELETE")

    def stopped() -> bool:
        status, body = call(f"{api}/users/{user}", token)
        return status == 200 and not json.loads(body).get("servers")

    wait_for(f"{user}'s server to stop", stopped, timeout, every=2)


class Browser:
    """A user's browser, as far as the hub can tell: a cookie jar (name -> value) sent on
    every request, filled from Set-Cookie. Cookies are not tied to the base URL, so a jar
    can be carried to another port-forward of the same hub (after its pods changed)."""

    def __init__(self, cookies: dict[str, str] | None = None):
        self.cookies: dict[str, str] = dict(cookies or {})

    def get(self, url: str, **kwargs: Any) -> tuple[int, dict[str, list[str]], bytes]:
        return self._send(url, "GET", **kwargs)

    def post(self, url: str, form: dict[str, str]) -> tuple[int, dict[str, list[str]], bytes]:
        data = urllib.parse.urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self._send(url, "POST", data=data, headers=headers)

    def _send(
        self, url: str, method: str, *, data: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, list[str]], bytes]:
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        status, got, body = request(url, method=method, data=data, headers=headers)
        for line in got.get("set-cookie", []):
            jar: SimpleCookie = SimpleCookie()
            jar.load(line)
            for name, morsel in jar.items():
                expired = morsel["expires"] and "1970" in morsel["expires"]
                if expired or morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return status, got, body

    def login(self, base: str, user: str, password: str) -> int:
        """Log in through the hub's login form (with its XSRF token); the status of the
        form's POST (302 when the hub accepted the login)."""
        status, _, page = self.get(f"{base}/hub/login")
        assert status == 200, (status, page[-300:])
        found = re.search(rb'name="_xsrf"\s+value="([^"]+)"', page)
        form = {"username": user, "password": password}
        xsrf = found.group(1).decode() if found else self.cookies.get("_xsrf")
        if xsrf:
            form["_xsrf"] = xsrf
        status, _, _ = self.post(f"{base}/hub/login", form)
        return status

    def logged_in(self, base: str) -> bool:
        """Whether the hub takes this browser's cookies as a login: its home page answers
        200; without a valid login it redirects to the login page."""
        status, headers, _ = self.get(f"{base}/hub/home")
        if status == 200:
            return True
        location = (headers.get("location") or [""])[0]
        assert status == 302 and "/hub/login" in location, (status, location)
        return False
