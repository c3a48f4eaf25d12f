"""Who runs user code on `local` hubs when hubfleet runs as root.

The hub process stays root: JupyterHub's local spawner needs the privilege to switch users.
Every single-user server (and the kernels it starts) runs as one unprivileged system
account, `hubfleet-user`, which `ensure_account` creates (`useradd --system`) if missing:

- its Python is a venv built from the system's `/usr/bin/python3` under
  `/var/lib/hubfleet/envs/<key>` (root-owned, world-readable), because hubfleet's own venv
  points at an interpreter the account may not run (e.g. under `/root`, mode 0700). The key
  is a hash of that interpreter and the pinned packages (the same jupyterhub,
  jupyter-server and ipykernel versions as hubfleet's venv), so the venv is built once and
  reused; `./dev setup` builds it;
- its homes live under `/var/lib/hubfleet/homes/<cluster>/<hub>/<user>` (each home 0700,
  owned by the account; every directory above it root-owned 0711, so the account can pass
  through but not list), because the hub's own directory sits in hubfleet's data dir,
  which holds the Prefect database and secrets and stays 0700.

When hubfleet does not run as root, none of this applies: servers run as the invoking user
with homes in the hub's directory. `HUBFLEET_HOMES_DIR` moves the homes root (the tests
give each session its own).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

#: The system account user servers run as when hubfleet runs as root.
ACCOUNT = "hubfleet-user"
#: Root-owned state outside any user's home: the user-server venvs and the homes.
SYSTEM_DIR = Path("/var/lib/hubfleet")
#: The interpreter the user-server venv is built from: one the account can execute.
SYSTEM_PYTHON = "/usr/bin/python3"
#: What a user server needs, pinned to the versions in hubfleet's own venv.
SINGLEUSER_PACKAGES = ("jupyterhub", "jupyter-server", "ipykernel")
READY = ".hubfleet-ready"


class AccountError(RuntimeError):
    """The account or the user-server environment could not be set up."""


@dataclass(frozen=True)
class UserAccount:
    """How a hub started by root runs its user servers (rendered into its config)."""

    name: str  # the system account
    homes: Path  # this hub's homes: <homes>/<user>
    env: Path  # the user-server venv
    code: Path  # where the hub imports hubfleet's spawner from


def running_as_root() -> bool:
    return os.geteuid() == 0


def homes_root() -> Path:
    env = os.environ.get("HUBFLEET_HOMES_DIR")
    return Path(env) if env else SYSTEM_DIR / "homes"


def hub_homes(directory: Path) -> Path:
    """The homes of the hub in `directory` (`.../<cluster>/<hub>`) when run as root."""
    return homes_root() / directory.parent.name / directory.name


def singleuser_requirements() -> list[str]:
    """The user server's packages at the versions hubfleet's venv has (its pip cache has
    them, and the server matches the hub's jupyterhub exactly)."""
    out = []
    for name in SINGLEUSER_PACKAGES:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def env_dir() -> Path:
    """Where the user-server venv for these requirements lives (content-addressed)."""
    key = "\n".join([SYSTEM_PYTHON, *singleuser_requirements()])
    return SYSTEM_DIR / "envs" / hashlib.sha256(key.encode()).hexdigest()[:16]


def account_for(directory: Path) -> UserAccount:
    """The account plan of the hub in `directory`; changes nothing."""
    code = Path(__file__).resolve().parent.parent
    return UserAccount(ACCOUNT, hub_homes(directory), env_dir(), code)


def ensure_account(name: str = ACCOUNT) -> pwd.struct_passwd:
    """The system account, created if missing: no home, no login shell, its own group."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    done = subprocess.run(
        [
            useradd, "--system", "--user-group", "--no-create-home",
            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
            "--comment", "hubfleet local user servers", name,
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode not in (0, 9):  # 9: created meanwhile by another process
        raise AccountError(f"useradd {name} failed: {done.stderr.strip()}")
    return pwd.getpwnam(name)


def passable_dirs(path: Path) -> None:
    """Create `path` and its missing parents as root-owned 0711 (enter, not list); an
    existing directory below SYSTEM_DIR or the homes root is tightened to that too."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o711, exist_ok=True)
        os.chmod(directory, 0o711)
    os.chmod(path, 0o711)


def ensure_home(homes: Path, user: str, account: str = ACCOUNT) -> Path:
    """`homes/<user>`: 0700 and owned by the account; the directories above it 0711."""
    home = homes / home_name(user)
    passable_dirs(homes)
    home.mkdir(mode=0o700, exist_ok=True)
    entry = pwd.getpwnam(account)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)
    return home


def home_name(user: str) -> str:
    """A JupyterHub user name as one safe path component."""
    safe = "".join(ch if ch.isalnum() or ch in "-_.@+" else "_" for ch in user)
    return safe if safe.strip(".") else f"_{safe}"


def ensure_env(target: Path | None = None) -> Path:
    """Build the user-server venv if it is not there (one builder at a time; others wait).

    It is world-readable and root-owned: the account runs it but cannot change it."""
    target = target or env_dir()
    if (target / READY).is_file():
        return target
    if not Path(SYSTEM_PYTHON).is_file():
        raise AccountError(
            f"{SYSTEM_PYTHON} is missing: install Debian's python3 and python3-venv "
            "(./dev setup does)"
        )
    passable_dirs(target.parent)
    os.chmod(SYSTEM_DIR, 0o711)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / READY).is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)  # a build that died half-way
        requirements = singleuser_requirements()
        for argv in (
            [SYSTEM_PYTHON, "-m", "venv", str(target)],
            [str(target / "bin" / "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", *requirements],
        ):  # fmt: skip
            done = subprocess.run(
                argv, capture_output=True, text=True, umask=0o022, check=False,
                env={**os.environ, "PIP_NO_INPUT": "1"},
            )  # fmt: skip
            if done.returncode != 0:
                shutil.rmtree(target, ignore_errors=True)
                raise AccountError(
                    f"building the user-server venv {target} failed ({argv[2]}):\n"
                    + "\n".join(done.stderr.strip().splitlines()[-10:])
                )
        os.chmod(target, 0o755)
        (target / READY).write_text("\n".join(requirements) + "\n")
    return target


def ensure(directory: Path) -> UserAccount:
    """Everything a hub started by root needs for its user servers: the account, the
    venv, the hub's homes root. Idempotent and fast once done."""
    account = account_for(directory)
    ensure_account(account.name)
    ensure_env(account.env)
    passable_dirs(account.homes)
    return account


def main() -> None:
    """`python -m hubfleet.localusers`: set up the account and venv (./dev setup, as root)."""
    if not running_as_root():
        print("not root: user servers run as the invoking user; nothing to set up")
        return
    entry = ensure_account()
    target = env_dir()
    if not (target / READY).is_file():
        print(f"building the user-server venv {target} (pip; once)", file=sys.stderr)
    ensure_env(target)
    print(f"user servers run as {entry.pw_name} (uid {entry.pw_uid}) with {target}")


if __name__ == "__main__":
    main()
