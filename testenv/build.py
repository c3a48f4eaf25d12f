"""Build the real programs the integration tests need, from the registries, into a cache.

No container runtime runs on the CI machines and no binary may be downloaded, but the
Go module proxy is reachable. So every Go program is compiled from its module:

* helm, kwok and rclone: plain ``go install <module>/cmd/<x>@<version>`` (GOBIN = a temp dir).
* kube-apiserver, kube-controller-manager, kube-scheduler: ``k8s.io/kubernetes`` has
  ``replace`` directives to its in-repo staging modules, so ``go install ...@version``
  refuses it. We write a small wrapper module that requires ``k8s.io/kubernetes vX.Y.Z``
  and replaces each ``k8s.io/<staging>`` module with its published ``v0.Y.Z`` release.
* etcd: same trick for ``go.etcd.io/etcd/server/v3`` (replaces to ``../api`` etc.),
  unless a usable system etcd is on PATH.
* terraform: the one on PATH if recent enough, else OpenTofu built from its module
  (it replaces hashicorp/hcl with opentofu/hcl: same wrapper trick).

Binaries land in ``${HUBFLEET_CACHE_DIR:-~/.cache/hubfleet}/bin/<tool>-<version>`` and are
reused when present. Build times go to ``build-times.json`` in the cache dir (the
benchmark reads them). A failed build raises :class:`ToolBuildError` naming the tool,
version, failing command and the tail of its output; nothing is skipped silently.

Run ``python -m testenv.build_all`` to build everything (tools, the real node's
kubelet, kube-proxy, containerd, local-path-provisioner and images, the Debian base
image, the hub, single-user and proxy images (hubimages.py), Azurite, Dex (dex.py)).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from hubfleet import paths

VERSIONS_FILE = Path(__file__).with_name("versions.toml")

# One Go build at a time with -p 2: the CI machines have 2 cores and 24 GB; more
# parallelism only adds memory pressure (linking kube-apiserver is the peak).
GO_BUILD_PARALLELISM = "2"
# Generous: the cold Kubernetes build is the long pole (~6 min on an idle 2-core
# machine, ~17 min on one busy with other work).
GO_BUILD_TIMEOUT_S = 60 * 60
GO_MIN_VERSION = (1, 21)  # older Go cannot fetch the newer toolchain these modules need

TOOLS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "etcd",
    "kwok",
    "helm",
    "rclone",
    "terraform",
)

Progress = Callable[[str], None]


class ToolBuildError(RuntimeError):
    """A tool could not be built or found. The message says what, which version, the
    command that failed and the end of its output, so CI logs are enough to act on."""

    def __init__(
        self, tool: str, version: str, command: str | list[str], output: str = "", hint: str = ""
    ):
        self.tool = tool
        self.version = version
        # shlex.join: the printed command can be pasted into a shell as is.
        self.command = command if isinstance(command, str) else shlex.join(map(str, command))
        self.output_tail = "\n".join(output.strip().splitlines()[-40:])
        msg = f"building {tool} {version} failed\n  command: {self.command}"
        if hint:
            msg += f"\n  hint: {hint}"
        if self.output_tail:
            msg += "\n  output (tail):\n" + "\n".join(
                "    " + ln for ln in self.output_tail.splitlines()
            )
        super().__init__(msg)


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """``${HUBFLEET_CACHE_DIR:-~/.cache/hubfleet}`` (outside the repo, shared by runs)."""
    return paths.cache_dir()


def bin_dir() -> Path:
    return cache_dir() / "bin"


# --------------------------------------------------------------------------- one builder at a time

_held = threading.local()


@contextmanager
def build_lock() -> Iterator[None]:
    """Hold the cache's build lock: one builder at a time per cache dir.

    Two test runs sharing a cache (two checkouts, or ``./dev test`` beside ``hubfleet
    testenv build``) used to build the same tool into the same build dir at once, and
    one run's clean-up removed the other's output mid-copy. The lock is an ``flock`` on
    ``<cache>/build.lock`` (released by the kernel if the holder dies), re-entrant
    within a thread; a second process waits, saying so on stderr.
    """
    if getattr(_held, "depth", 0):
        _held.depth += 1
        try:
            yield
        finally:
            _held.depth -= 1
        return
    path = cache_dir() / "build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"testenv: another build holds {path}; waiting for it to finish",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0


_F = TypeVar("_F", bound=Callable)


def serialized(fn: _F) -> _F:
    """Run ``fn`` under :func:`build_lock` (for the entry points that build into the cache)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with build_lock():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def load_versions() -> dict:
    """The pinned versions from versions.toml."""
    with VERSIONS_FILE.open("rb") as f:
        return tomllib.load(f)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


# --------------------------------------------------------------------------- running


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Static binaries, no C toolchain needed; the control plane binaries build fine so.
    env["CGO_ENABLED"] = "0"
    # The wrapper modules have no go.sum checked in: let the go command fill it in.
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=mod").strip()
    return env


def _run(
    tool: str,
    version: str,
    cmd: list[str],
    *,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: float = GO_BUILD_TIMEOUT_S,
    log: Path | None = None,
) -> str:
    """Run a build command; on any failure raise ToolBuildError with the output tail."""
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError as e:
        raise ToolBuildError(tool, version, cmd, str(e)) from e
    except subprocess.TimeoutExpired as e:
        out = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
        raise ToolBuildError(tool, version, cmd, out, hint=f"timed out after {timeout:.0f}s") from e
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}  (cwd={cwd})\n{proc.stdout}\n")
    if proc.returncode != 0:
        raise ToolBuildError(tool, version, cmd, proc.stdout, hint=f"exit status {proc.returncode}")
    return proc.stdout


def check_go() -> str:
    """Return the path of a usable ``go``, or raise ToolBuildError saying how to install it."""
    go = shutil.which("go")
    hint = (
        "install Go >= 1.21 (newer toolchains are then fetched from the Go proxy automatically): "
        "`apt-get install golang-go` on Debian/Ubuntu, or unpack the tarball from "
        "https://go.dev/dl/ into /usr/local/go and put /usr/local/go/bin on PATH"
    )
    if go is None:
        raise ToolBuildError("go", ">= 1.21", "go version", "go: command not found", hint=hint)
    out = _run("go", ">= 1.21", [go, "version"], timeout=60)
    m = re.search(r"go(\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < GO_MIN_VERSION:
        raise ToolBuildError("go", ">= 1.21", "go version", out, hint=hint)
    return go


def _mod_info(go: str, tool: str, version: str, module_at: str, workdir: Path) -> dict:
    """``go mod download -json module@version``: the module's Dir and GoMod file."""
    out = _run(
        tool,
        version,
        [go, "mod", "download", "-json", module_at],
        cwd=workdir,
        env=_go_env(),
        timeout=1800,
    )
    info = json.loads(out)
    if info.get("Error"):
        raise ToolBuildError(tool, version, f"go mod download -json {module_at}", info["Error"])
    return info


def _go_directive(gomod: str) -> str:
    """The ``go`` line of a go.mod; the wrapper must declare at least the same."""
    m = re.search(r"^go\s+(\S+)", gomod, re.M)
    return m.group(1) if m else "1.21"


def _write_wrapper(
    workdir: Path, name: str, go_version: str, requires: dict[str, str], replaces: dict[str, str]
) -> None:
    """A throwaway module that pins a program's module and rewrites its local replaces."""
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"module hubfleet.local/testenv-build/{name}", "", f"go {go_version}", "", "require ("]
    lines += [f"\t{m} {v}" for m, v in requires.items()]
    lines += [")", ""]
    if replaces:
        lines += ["replace ("] + [f"\t{m} => {m} {v}" for m, v in replaces.items()] + [")", ""]
    (workdir / "go.mod").write_text("\n".join(lines))


# --------------------------------------------------------------------------- build records


def _record_build(tool: str, version: str, seconds: float) -> None:
    path = cache_dir() / "build-times.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[tool] = {
        "version": version,
        "seconds": round(seconds, 1),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_times() -> dict:
    """What build-times.json recorded (tool -> version, seconds, built_at)."""
    try:
        return json.loads((cache_dir() / "build-times.json").read_text())
    except (OSError, ValueError):
        return {}


def _install(tool: str, built: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copy2(built, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, dest)  # atomic: a half-copied binary never looks "present"


# --------------------------------------------------------------------------- per-tool builds


def build_kubernetes(version: str, progress: Progress = print) -> dict[str, Path]:
    """kube-apiserver, kube-controller-manager and kube-scheduler at ``version``."""
    return _build_kubernetes_cmds(
        version,
        ("kube-apiserver", "kube-controller-manager", "kube-scheduler"),
        "kubernetes",
        "cold: ~6 min on an idle 2-core machine",
        progress,
    )


def build_kubernetes_node(version: str, progress: Progress = print) -> dict[str, Path]:
    """kubelet and kube-proxy at ``version`` (the real node; same wrapper module and module
    cache as the control plane, so after it only the node's own packages compile)."""
    return _build_kubernetes_cmds(
        version,
        ("kubelet", "kube-proxy"),
        "kubernetes-node",
        "cold: ~10 min on 2 cores, less after the control plane build",
        progress,
    )


def _build_kubernetes_cmds(
    version: str, names: tuple[str, ...], record: str, expect: str, progress: Progress
) -> dict[str, Path]:
    dests = {n: bin_dir() / f"{n}-{version}" for n in names}
    if all(p.exists() for p in dests.values()):
        return dests
    go = check_go()
    t0 = time.monotonic()
    # One work dir per build: the control-plane and node builds may run at the same time
    # (two checkouts); the go command locks the shared module and build caches itself.
    work = cache_dir() / "build" / f"{record}-{version}"
    log = cache_dir() / "logs" / f"{record}-{version}.log"
    work.mkdir(parents=True, exist_ok=True)
    info = _mod_info(go, record, version, f"k8s.io/kubernetes@v{version}", work)
    gomod = Path(info["GoMod"]).read_text()
    # Staging modules are required at the placeholder v0.0.0 and replaced with ./staging/...;
    # their published releases are v0.<minor>.<patch> of the same tree.
    major, minor, patch = _version_tuple(version)
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.\-/]+) v0\.0\.0\s*$", gomod, re.M)))
    if not staging:
        raise ToolBuildError(
            record, version, f"parse {info['GoMod']}", "no k8s.io/* v0.0.0 requirements found"
        )
    _write_wrapper(
        work,
        "kubernetes",
        _go_directive(gomod),
        {"k8s.io/kubernetes": f"v{version}"},
        {m: f"v0.{minor}.{patch}" for m in staging},
    )
    # The version the binaries report (otherwise v0.0.0-master); clients such as helm read it.
    stamp = {
        "gitVersion": f"v{version}",
        "gitMajor": str(major),
        "gitMinor": str(minor),
        "gitTreeState": "clean",
        "buildDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    ldflags = ["-s", "-w"] + [
        f"-X {pkg}.{k}={v}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for k, v in stamp.items()
    ]
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    progress(f"  {record} {version}: go build {' '.join(names)} ({expect}) ...")
    _run(
        record,
        version,
        [
            go,
            "build",
            "-p",
            GO_BUILD_PARALLELISM,
            "-trimpath",
            "-ldflags",
            " ".join(ldflags),
            "-o",
            str(out) + "/",
        ]
        + [f"k8s.io/kubernetes/cmd/{n}" for n in names],
        cwd=work,
        env=_go_env(),
        log=log,
    )
    for n in names:
        _install(n, out / n, dests[n])
    shutil.rmtree(out, ignore_errors=True)
    _record_build(record, version, time.monotonic() - t0)
    return dests


def build_helm(version: str, progress: Progress = print) -> Path:
    dest = bin_dir() / f"helm-{version}"
    if dest.exists():
        return dest
    t0 = time.monotonic()
    progress(f"  helm {version}: go install helm.sh/helm/v3/cmd/helm@v{version} ...")
    ldflags = (
        f"-s -w -X helm.sh/helm/v3/internal/version.version=v{version}"
        " -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    )
    tmp, gobin = _go_install("helm", version, [f"helm.sh/helm/v3/cmd/helm@v{version}"], ldflags)
    with tmp:
        _install("helm", gobin / "helm", dest)
    _record_build("helm", version, time.monotonic() - t0)
    return dest


def build_rclone(version: str, progress: Progress = print) -> Path:
    """rclone, the export Job's program (the tests run the Job's script with it)."""
    dest = bin_dir() / f"rclone-{version}"
    if dest.exists():
        return dest
    t0 = time.monotonic()
    progress(f"  rclone {version}: go install github.com/rclone/rclone@v{version} ...")
    ldflags = f"-s -w -X github.com/rclone/rclone/fs.Version=v{version}"
    tmp, gobin = _go_install("rclone", version, [f"github.com/rclone/rclone@v{version}"], ldflags)
    with tmp:
        _install("rclone", gobin / "rclone", dest)
    _record_build("rclone", version, time.monotonic() - t0)
    return dest


def _go_install(
    tool: str, version: str, pkgs: list[str], ldflags: str, tags: str = ""
) -> tuple[tempfile.TemporaryDirectory, Path]:
    """``go install pkg@version ...`` into a fresh temp GOBIN; returns (tempdir, GOBIN)."""
    go = check_go()
    tmp = tempfile.TemporaryDirectory(prefix="hubfleet-build-")
    env = _go_env() | {"GOBIN": tmp.name}
    env["GOFLAGS"] = os.environ.get("GOFLAGS", "")  # -mod=mod is not allowed with pkg@version
    cmd = [go, "install", "-p", GO_BUILD_PARALLELISM, "-trimpath", "-ldflags", ldflags]
    if tags:
        cmd += ["-tags", tags]
    try:
        _run(
            tool,
            version,
            cmd + pkgs,
            cwd=Path(tmp.name),
            env=env,
            log=cache_dir() / "logs" / f"{tool}-{version}.log",
        )
    except BaseException:
        tmp.cleanup()
        raise
    return tmp, Path(tmp.name)


CONTAINERD_BINARIES = ("containerd", "ctr", "containerd-shim-runc-v2")


def containerd_dir(version: str) -> Path:
    """containerd, ctr and containerd-shim-runc-v2 of one version live in one directory:
    containerd finds its shim by name on PATH, so this directory goes first on PATH."""
    return bin_dir() / f"containerd-{version}"


def build_containerd(version: str, progress: Progress = print) -> Path:
    """containerd 2.x (+ ctr, runc shim) from the Go module proxy; returns its directory.

    Built rather than Debian's containerd 1.6: kubelet 1.37 asks the runtime for its
    cgroup driver through the CRI ``RuntimeConfig`` call, which 1.6 lacks (the kubelet
    falls back to its own setting, a fallback marked for removal in 1.38), and 1.6 is
    out of upstream support. Pure Go (CGO off), without the snapshotters that need C
    libraries or kernel features this machine lacks.
    """
    dest = containerd_dir(version)
    if all((dest / n).exists() for n in CONTAINERD_BINARIES):
        return dest
    t0 = time.monotonic()
    mod = "github.com/containerd/containerd/v2"
    progress(f"  containerd {version}: go install {mod}/cmd/... (cold: ~2.5 min idle) ...")
    tmp, gobin = _go_install(
        "containerd",
        version,
        [f"{mod}/cmd/{n}@v{version}" for n in CONTAINERD_BINARIES],
        f"-s -w -X {mod}/version.Version={version} -X {mod}/version.Revision=hubfleet",
        tags="no_btrfs no_devmapper no_zfs no_aufs",
    )
    with tmp:
        for n in CONTAINERD_BINARIES:
            _install("containerd", gobin / n, dest / n)
    _record_build("containerd", version, time.monotonic() - t0)
    return dest


def build_local_path_provisioner(version: str, progress: Progress = print) -> Path:
    """rancher/local-path-provisioner: the real node's dynamic PVC provisioner (host path)."""
    dest = bin_dir() / f"local-path-provisioner-{version}"
    if dest.exists():
        return dest
    t0 = time.monotonic()
    mod = "github.com/rancher/local-path-provisioner"
    progress(f"  local-path-provisioner {version}: go install {mod}@v{version} ...")
    tmp, gobin = _go_install("local-path-provisioner", version, [f"{mod}@v{version}"], "-s -w")
    with tmp:
        _install("local-path-provisioner", gobin / "local-path-provisioner", dest)
    _record_build("local-path-provisioner", version, time.monotonic() - t0)
    return dest


def kwok_stages_file(version: str) -> Path:
    """kwok's default node/pod Stage objects, extracted at build time from the same module
    version. Standalone ``kwok`` has no built-in stages (kwokctl normally writes them)."""
    return bin_dir() / f"kwok-{version}-stages.yaml"


# Same selection kwokctl makes: fast node init, heartbeat through Leases, pod ready/complete/delete.
_KWOK_STAGE_FILES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


def build_kwok(version: str, progress: Progress = print) -> Path:
    dest = bin_dir() / f"kwok-{version}"
    stages = kwok_stages_file(version)
    if dest.exists() and stages.exists():
        return dest
    go = check_go()
    t0 = time.monotonic()
    progress(f"  kwok {version}: go install sigs.k8s.io/kwok/cmd/kwok@v{version} ...")
    with tempfile.TemporaryDirectory(prefix="hubfleet-build-") as tmp:
        info = _mod_info(go, "kwok", version, f"sigs.k8s.io/kwok@v{version}", Path(tmp))
        docs = []
        for rel in _KWOK_STAGE_FILES:
            p = Path(info["Dir"]) / rel
            if not p.exists():
                raise ToolBuildError(
                    "kwok", version, f"read {p}", "stage file missing in module source"
                )
            docs.append(p.read_text().strip())
        ldflags = f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={version}"
        built, gobin = _go_install(
            "kwok", version, [f"sigs.k8s.io/kwok/cmd/kwok@v{version}"], ldflags
        )
        stages.parent.mkdir(parents=True, exist_ok=True)
        stages.write_text("\n---\n".join(docs) + "\n")
        with built:
            _install("kwok", gobin / "kwok", dest)
    _record_build("kwok", version, time.monotonic() - t0)
    return dest


def _system_etcd(min_version: str) -> Path | None:
    """A system etcd (e.g. Debian's etcd-server) if it is new enough for the apiserver."""
    etcd = shutil.which("etcd")
    if not etcd:
        return None
    try:
        out = subprocess.run([etcd, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"etcd Version:\s*(\S+)", out)
    if m and _version_tuple(m.group(1)) >= _version_tuple(min_version):
        return Path(etcd)
    return None


def build_etcd(version: str, min_system_version: str, progress: Progress = print) -> Path:
    dest = bin_dir() / f"etcd-{version}"
    if dest.exists():
        return dest
    system = _system_etcd(min_system_version)
    if system is not None:
        progress(f"  etcd: using {system} (>= {min_system_version})")
        return system
    go = check_go()
    t0 = time.monotonic()
    work = cache_dir() / "build" / f"etcd-{version}"
    progress(f"  etcd {version}: go build go.etcd.io/etcd/server/v3 (wrapper module) ...")
    # server/v3 replaces its sibling modules with ../api etc.; pin their releases instead.
    siblings = (
        "go.etcd.io/etcd/api/v3",
        "go.etcd.io/etcd/client/pkg/v3",
        "go.etcd.io/etcd/client/v3",
        "go.etcd.io/etcd/pkg/v3",
    )
    work.mkdir(parents=True, exist_ok=True)
    info = _mod_info(go, "etcd", version, f"go.etcd.io/etcd/server/v3@v{version}", work)
    _write_wrapper(
        work,
        "etcd",
        _go_directive(Path(info["GoMod"]).read_text()),
        {"go.etcd.io/etcd/server/v3": f"v{version}"},
        {m: f"v{version}" for m in siblings},
    )
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _run(
        "etcd",
        version,
        [
            go,
            "build",
            "-p",
            GO_BUILD_PARALLELISM,
            "-trimpath",
            "-ldflags",
            "-s -w",
            "-o",
            str(out / "etcd"),
            "go.etcd.io/etcd/server/v3",
        ],
        cwd=work,
        env=_go_env(),
        log=cache_dir() / "logs" / f"etcd-{version}.log",
    )
    _install("etcd", out / "etcd", dest)
    shutil.rmtree(out, ignore_errors=True)
    _record_build("etcd", version, time.monotonic() - t0)
    return dest


def _path_terraform(min_version: str) -> Path | None:
    tf = shutil.which("terraform")
    if not tf:
        return None
    try:
        out = subprocess.run(
            [tf, "version", "-json"], capture_output=True, text=True, timeout=60
        ).stdout
        v = json.loads(out)["terraform_version"]
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError):
        return None
    return Path(tf) if _version_tuple(v) >= _version_tuple(min_version) else None


def build_opentofu(version: str, progress: Progress = print) -> Path:
    """OpenTofu from the Go module proxy (its go.mod replaces hashicorp/hcl: wrapper trick)."""
    dest = bin_dir() / f"tofu-{version}"
    if dest.exists():
        return dest
    go = check_go()
    t0 = time.monotonic()
    work = cache_dir() / "build" / f"opentofu-{version}"
    work.mkdir(parents=True, exist_ok=True)
    info = _mod_info(go, "opentofu", version, f"github.com/opentofu/opentofu@v{version}", work)
    gomod = Path(info["GoMod"]).read_text()
    replaces = {}
    for old, new, newv in re.findall(
        r"^\s*(?:replace\s+)?(\S+)(?:\s+\S+)?\s+=>\s+(\S+)\s+(v\S+)\s*$", gomod, re.M
    ):
        replaces[old] = (new, newv)
    lines = [
        "module hubfleet.local/testenv-build/opentofu",
        "",
        f"go {_go_directive(gomod)}",
        "",
        f"require github.com/opentofu/opentofu v{version}",
        "",
    ]
    lines += [f"replace {old} => {new} {newv}" for old, (new, newv) in replaces.items()]
    (work / "go.mod").write_text("\n".join(lines) + "\n")
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    progress(
        f"  opentofu {version}: go build github.com/opentofu/opentofu/cmd/tofu (wrapper module) ..."
    )
    _run(
        "opentofu",
        version,
        [
            go,
            "build",
            "-p",
            GO_BUILD_PARALLELISM,
            "-trimpath",
            "-ldflags",
            "-s -w -X github.com/opentofu/opentofu/version.dev=no",
            "-o",
            str(out / "tofu"),
            "github.com/opentofu/opentofu/cmd/tofu",
        ],
        cwd=work,
        env=_go_env(),
        log=cache_dir() / "logs" / f"opentofu-{version}.log",
    )
    _install("opentofu", out / "tofu", dest)
    shutil.rmtree(out, ignore_errors=True)
    _record_build("opentofu", version, time.monotonic() - t0)
    return dest


def find_or_build_terraform(versions: dict, progress: Progress = print) -> Path:
    """terraform on PATH if usable, else OpenTofu. HUBFLEET_TESTENV_USE_OPENTOFU=1 forces
    OpenTofu (to exercise the fallback on a machine that has terraform)."""
    if os.environ.get("HUBFLEET_TESTENV_USE_OPENTOFU") != "1":
        tf = _path_terraform(versions["terraform"]["min_version"])
        if tf is not None:
            return tf
        progress(
            f"  terraform: none >= {versions['terraform']['min_version']} on PATH; "
            "building OpenTofu"
        )
    return build_opentofu(versions["opentofu"]["version"], progress)


# --------------------------------------------------------------------------- azurite (npm)


def azurite_dir() -> Path:
    return cache_dir() / "node-azurite"


@serialized
def ensure_azurite(progress: Progress = print) -> Path:
    """Install the pinned azurite with npm into the cache; return the azurite-blob script."""
    version = load_versions()["azurite"]["version"]
    prefix = azurite_dir()
    script = prefix / "node_modules" / ".bin" / "azurite-blob"
    pkg = prefix / "node_modules" / "azurite" / "package.json"
    try:
        if script.exists() and json.loads(pkg.read_text())["version"] == version:
            return script
    except (OSError, ValueError, KeyError):
        pass
    npm = shutil.which("npm")
    if npm is None:
        raise ToolBuildError(
            "azurite",
            version,
            "npm install",
            "npm: command not found",
            hint="install Node.js >= 18 with npm (e.g. `apt-get install nodejs npm`)",
        )
    t0 = time.monotonic()
    progress(f"  azurite {version}: npm install into {prefix} ...")
    prefix.mkdir(parents=True, exist_ok=True)
    _run(
        "azurite",
        version,
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"azurite@{version}"],
        timeout=900,
        log=cache_dir() / "logs" / f"azurite-{version}.log",
    )
    if not script.exists():
        raise ToolBuildError("azurite", version, "npm install", f"{script} missing after install")
    _record_build("azurite", version, time.monotonic() - t0)
    return script


# --------------------------------------------------------------------------- entry points


@serialized
def ensure_tools(progress: Progress = print) -> dict[str, Path]:
    """Return ``{tool: binary path}`` for every tool in TOOLS, building what is missing.

    Raises ToolBuildError (tool, version, failed command, output tail) on any failure.
    """
    v = load_versions()
    tools: dict[str, Path] = {}
    steps: list[tuple[str, Callable[[], None]]] = [
        (
            "kubernetes",
            lambda: tools.update(build_kubernetes(v["kubernetes"]["version"], progress)),
        ),
        (
            "etcd",
            lambda: tools.__setitem__(
                "etcd", build_etcd(v["etcd"]["version"], v["etcd"]["min_system_version"], progress)
            ),
        ),
        ("kwok", lambda: tools.__setitem__("kwok", build_kwok(v["kwok"]["version"], progress))),
        ("helm", lambda: tools.__setitem__("helm", build_helm(v["helm"]["version"], progress))),
        (
            "rclone",
            lambda: tools.__setitem__("rclone", build_rclone(v["rclone"]["version"], progress)),
        ),
        ("terraform", lambda: tools.__setitem__("terraform", find_or_build_terraform(v, progress))),
    ]
    for name, step in steps:
        t0 = time.monotonic()
        step()
        dt = time.monotonic() - t0
        if dt > 1:
            progress(f"  {name}: ready in {dt:.1f}s")
    return tools
