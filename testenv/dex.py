"""Dex, a real OpenID Connect provider, for the login tests: built from the Go module proxy
and run as a process on one local address with static clients and static passwords.

Building: Dex's go.mod says ``module github.com/dexidp/dex`` while its release tags are
v2.x (no /v2 suffix), so ``go install github.com/dexidp/dex/cmd/dex@v2.41.1`` is refused.
As for Kubernetes' staging modules (build.py), a wrapper module requires the release tag's
commit as a pseudo-version (``module_version`` in versions.toml) and redoes Dex's own
``replace github.com/dexidp/dex/api/v2 => ./api/v2`` with the api module's pseudo-version
of the same commit. Dex's command always links its sqlite3 storage, which needs cgo (gcc,
installed by ./dev). The binary lands in ``<cache>/bin/dex-<version>``.

Running: ``Dex(clients=..., users=...)`` writes a config (storage sqlite3 in its temp dir,
the password database on, the approval screen off) and starts ``dex serve``. A client's
secret is never written to the config: Dex reads it from the environment (``secretEnv``).
Passwords are stored as bcrypt hashes, as Dex requires.
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import requests

from . import build
from .emulators import LOOPBACK, EmulatorError, _free_port, _Server


def build_dex(progress: build.Progress = print) -> Path:
    """The dex binary of versions.toml's [dex], built once into the cache."""
    spec = build.load_versions()["dex"]
    version = spec["version"]
    dest = build.bin_dir() / f"dex-{version}"
    if dest.exists():
        return dest
    with build.build_lock():
        if dest.exists():  # built by another process while we waited
            return dest
        go = build.check_go()
        t0 = time.monotonic()
        work = build.cache_dir() / "build" / f"dex-{version}"
        log = build.cache_dir() / "logs" / f"dex-{version}.log"
        work.mkdir(parents=True, exist_ok=True)
        module = f"github.com/dexidp/dex@{spec['module_version']}"
        info = build._mod_info(go, "dex", version, module, work)
        gomod = Path(info["GoMod"]).read_text()
        build._write_wrapper(
            work,
            "dex",
            build._go_directive(gomod),
            {"github.com/dexidp/dex": spec["module_version"]},
            {"github.com/dexidp/dex/api/v2": spec["api_version"]},
        )
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        progress(f"  dex {version}: go build github.com/dexidp/dex/cmd/dex (wrapper module) ...")
        env = build._go_env() | {"CGO_ENABLED": "1"}  # dex's sqlite3 storage is cgo
        build._run(
            "dex",
            version,
            [
                go,
                "build",
                "-p",
                build.GO_BUILD_PARALLELISM,
                "-trimpath",
                "-ldflags",
                f"-s -w -X main.version=v{version}",
                "-o",
                str(out / "dex"),
                "github.com/dexidp/dex/cmd/dex",
            ],
            cwd=work,
            env=env,
            log=log,
        )
        build._install("dex", out / "dex", dest)
        shutil.rmtree(out, ignore_errors=True)
        build._record_build("dex", version, time.monotonic() - t0)
    return dest


@dataclass(frozen=True)
class DexClient:
    """A static OAuth client: its id, secret (given to Dex by environment) and callbacks."""

    client_id: str
    secret: str = field(repr=False)
    redirect_uris: tuple[str, ...]


@dataclass(frozen=True)
class DexUser:
    """A static password user: logs in with `email` and `password`; `username` is the
    `name` claim Dex returns."""

    username: str
    email: str
    password: str = field(repr=False)


def bcrypt_hash(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()


class Dex(_Server):
    """A real Dex on `host`:`port` with issuer http://<host>:<port>/dex."""

    name = "dex"

    def __init__(
        self,
        clients: Sequence[DexClient],
        users: Sequence[DexUser],
        port: int | None = None,
        host: str = LOOPBACK,
        binary: Path | None = None,
    ):
        super().__init__(port or _free_port(host), 60.0, host)
        self.clients = list(clients)
        self.users = list(users)
        self.binary = binary
        self._staging: Path | None = None

    @property
    def issuer(self) -> str:
        return f"http://{self.host}:{self.port}/dex"

    def config(self, workdir: Path) -> dict:
        """Dex's config (JSON is YAML): no client secret in it, only env var names."""
        return {
            "issuer": self.issuer,
            "storage": {"type": "sqlite3", "config": {"file": str(workdir / "dex.db")}},
            "web": {"http": f"{self.host}:{self.port}"},
            "oauth2": {"skipApprovalScreen": True},
            "enablePasswordDB": True,
            "logger": {"level": "info"},
            "staticClients": [
                {
                    "id": c.client_id,
                    "name": c.client_id,
                    "redirectURIs": list(c.redirect_uris),
                    "secretEnv": f"DEX_CLIENT_SECRET_{i}",
                }
                for i, c in enumerate(self.clients)
            ],
            "staticPasswords": [
                {
                    "email": u.email,
                    "hash": bcrypt_hash(u.password),
                    "username": u.username,
                    "userID": str(uuid.uuid5(uuid.NAMESPACE_URL, u.email)),
                }
                for u in self.users
            ],
        }

    def start(self) -> Dex:
        binary = self.binary or build_dex()
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TZ")}
        env |= {f"DEX_CLIENT_SECRET_{i}": c.secret for i, c in enumerate(self.clients)}
        # The config goes into the server's private temp dir (created by _spawn); write it
        # through a launcher dir of our own first, since _spawn makes the dir.
        import tempfile

        staging = Path(tempfile.mkdtemp(prefix="hubfleet-dex-config-"))
        try:
            config = staging / "config.yaml"
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(self.config(staging), out)
            self._spawn([str(binary), "serve", str(config)], env=env)
        except EmulatorError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._staging = staging
        return self

    def stop(self) -> None:
        super().stop()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def log_text(self) -> str:
        """Dex's log so far (for the secret scan and failure messages)."""
        if self.component is None:
            return ""
        return Path(self.component.log).read_text(errors="replace")


# --- the browser's side of a login ---------------------------------------------------

ALLOWED = DexUser("alice", "alice@example.org", secrets.token_urlsafe(12))
ADMIN = DexUser("ada", "ada@example.org", secrets.token_urlsafe(12))
OUTSIDER = DexUser("mallory", "mallory@example.org", secrets.token_urlsafe(12))
USERS = (ALLOWED, ADMIN, OUTSIDER)


@dataclass
class Login:
    """Where a login ended: the last answer, and the session holding the hub's cookies."""

    session: requests.Session
    answer: requests.Response
    passed_through: list[str]  # every URL the browser was sent to


def log_in(hub_url: str, user: DexUser, timeout: float = 30) -> Login:
    """GET /hub/oauth_login, follow the redirects to Dex's password form, post it, and
    follow the redirects back through the hub's callback to wherever the hub sends the
    user (its spawn pages for an allowed user, a 403 page for one outside the allowed set)."""
    session = requests.Session()
    start = session.get(f"{hub_url}/hub/oauth_login", timeout=timeout)
    seen = [r.url for r in start.history] + [start.url]
    assert "/dex/auth" in start.url, f"not sent to Dex: {seen}"
    form = re.search(r'<form[^>]*action="([^"]*)"', start.text)
    assert form, f"no login form at {start.url}: {start.text[:500]}"
    action = urljoin(start.url, html.unescape(form.group(1)))
    answer = session.post(
        action, data={"login": user.email, "password": user.password}, timeout=timeout
    )
    seen += [r.url for r in answer.history] + [answer.url]
    return Login(session, answer, seen)


def client_for(redirect_uri: str, client_id: str = "hubfleet-login-test") -> DexClient:
    """A Dex static client with a fresh random secret, which the tests scan for."""
    return DexClient(client_id, secrets.token_urlsafe(32), (redirect_uri,))
