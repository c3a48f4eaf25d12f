"""Where hubfleet keeps things on this machine: state, caches, the registry."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Where a worker image keeps the hubfleet checkout (an editable install, so REPO_ROOT is
#: this inside the image) and the fleet it runs: deployments on a Kubernetes work pool
#: work from there (testenv/hubimages.py builds such an image).
WORKER_IMAGE_ROOT = "/opt/hubfleet"
WORKER_IMAGE_FLEET = f"{WORKER_IMAGE_ROOT}/fleet"


def data_dir() -> Path:
    """State of local hubs and the demo's Prefect server (`HUBFLEET_DATA_DIR` overrides)."""
    env = os.environ.get("HUBFLEET_DATA_DIR")
    return Path(env) if env else platformdirs.user_data_path("hubfleet")


def cache_dir() -> Path:
    """Tools that are slow to build or install (`HUBFLEET_CACHE_DIR` overrides)."""
    env = os.environ.get("HUBFLEET_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hubfleet"


def fleet_dir() -> Path:
    """The registry: `HUBFLEET_FLEET`, else ./fleet, else the checkout's example fleet."""
    env = os.environ.get("HUBFLEET_FLEET")
    if env:
        return Path(env)
    here = Path.cwd() / "fleet"
    return here if (here / "fleet.yaml").is_file() else REPO_ROOT / "fleet"


def local_hubs_dir(cluster_data_dir: str | None) -> Path:
    """Root of a local cluster's hubs: HUBFLEET_DATA_DIR, else the cluster's data_dir."""
    if "HUBFLEET_DATA_DIR" not in os.environ and cluster_data_dir:
        return Path(cluster_data_dir).expanduser() / "hubs"
    return data_dir() / "hubs"


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter (0700), with every parent it creates
    0700 too; an existing `path` is tightened (mkdir's mode never changes one)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def private_file(path: Path, text: str | None = None) -> Path:
    """`path` readable by its owner only (0600), whatever the umask; with `text`, (re)written
    atomically, never readable by others in between."""
    if text is not None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return path
