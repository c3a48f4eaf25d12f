"""Container images built on this machine for the real test node (no registry, no pulls).

* ``pause``: the pod sandbox. A few lines of C (exit on SIGINT/SIGTERM, reap children),
  linked statically with ``gcc -static``.
* ``busybox``: Debian's ``busybox-static`` binary with a symlink per applet, for test pods
  and for the local-path provisioner's helper pods.
* ``rclone``: the export Job's image, ``docker.io/rclone/rclone:<version>`` (the reference
  tasks/kube_export.py uses, so the Job needs no override): the busybox layer (the Job's
  script runs in ``/bin/sh`` with ``mktemp``) plus the static rclone binary the test tools
  build from the Go module proxy at versions.toml's ``[rclone]`` version. Not imported at
  node start (most tests never export): ``RealNode.import_image`` imports it on demand.

Each image is written as an OCI image-layout tar (oci-layout, index.json with the
``io.containerd.image.name`` annotation, manifest, config and one uncompressed layer; an
image built on another, as in hubimages.py, lists the base's layers first), which
``ctr images import`` reads. Layers are built with fixed owners and timestamps, so
the same inputs give the same digest; archives are cached under
``<cache>/images/<name>-<input hash>.tar`` and rebuilt only when an input changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import build

# Registry-less names: "hubfleet.local" is not a resolvable registry, so a pull can never
# reach the internet; pods must use imagePullPolicy IfNotPresent or Never.
PAUSE_IMAGE = "hubfleet.local/pause:1"
BUSYBOX_IMAGE = "hubfleet.local/busybox:1"
#: The upstream image's name, at the version the tools build rclone at: the node answers
#: for it, and nothing is pulled (the name resolves only to what was imported).
RCLONE_IMAGE = "docker.io/rclone/rclone:{version}"

PAUSE_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
    struct sigaction term = {.sa_handler = on_term}, chld = {.sa_handler = on_chld};
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGCHLD, &chld, NULL);
    for (;;) pause();
}
"""

BUSYBOX_BINARY = Path("/bin/busybox")  # Debian busybox-static (./dev installs it)


class ImageBuildError(RuntimeError):
    """An image could not be built (message names the image and the failing step)."""


@dataclass(frozen=True)
class ImageArchive:
    """A built OCI archive: the image reference it carries and its path."""

    ref: str
    path: Path


def images_dir() -> Path:
    return build.cache_dir() / "images"


def _tar_layer(files: dict[str, tuple[bytes | None, int, str | None]]) -> bytes:
    """An uncompressed layer: path -> (content or None for a dir, mode, symlink target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            content, mode, link = files[path]
            info = tarfile.TarInfo(path)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = mode
            if link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = link
                tar.addfile(info)
            elif content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_oci_archive(dest: Path, ref: str, layer: bytes | list[bytes], config: dict) -> None:
    """Write an OCI image-layout tar; ``ref`` names it for ``ctr import``.

    ``layer`` is one uncompressed layer or a list of them, lowest first (an image derived
    from another lists the base's layer first, so containerd shares its snapshot).
    """
    layers = [layer] if isinstance(layer, bytes) else layer
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(data).hexdigest() for data in layers],
        },
        "history": [{"created_by": CREATED_BY} for _ in layers],
    }
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        layer_descs = [
            _blob(tar, data) | {"mediaType": "application/vnd.oci.image.layer.v1.tar"}
            for data in layers
        ]
        config_desc = _blob(tar, json.dumps(image_config, sort_keys=True).encode()) | {
            "mediaType": "application/vnd.oci.image.config.v1+json"
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": layer_descs,
        }
        manifest_desc = _blob(tar, json.dumps(manifest, sort_keys=True).encode()) | {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": ref,
                "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
            },
        }
        index = {"schemaVersion": 2, "manifests": [manifest_desc]}
        for name, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index, sort_keys=True).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(dest)


#: In every image's config history. It is part of every digest but of no cache key (here,
#: rootfs.base_key, hubimages.image_key): changing it makes a rebuild differ from the cached
#: archive of the same key, so it keeps the name of the module's first home.
CREATED_BY = "hubfleet.testenv.images"


def _cached(name: str, inputs: bytes) -> Path:
    return images_dir() / f"{name}-{hashlib.sha256(inputs).hexdigest()[:16]}.tar"


def build_pause_image() -> ImageArchive:
    """The sandbox image: a static ``/pause`` (gcc -static)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageBuildError("pause image: gcc not found (apt-get install gcc libc6-dev)")
    gcc_version = subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout
    dest = _cached("pause", PAUSE_C.encode() + gcc_version.encode())
    if dest.exists():
        return ImageArchive(PAUSE_IMAGE, dest)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubfleet-pause-") as tmp:
        src, binary = Path(tmp) / "pause.c", Path(tmp) / "pause"
        src.write_text(PAUSE_C)
        proc = subprocess.run(
            [gcc, "-static", "-Os", "-s", "-o", str(binary), str(src)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ImageBuildError(f"pause image: gcc -static failed:\n{proc.stderr[-2000:]}")
        layer = _tar_layer({"pause": (binary.read_bytes(), 0o755, None)})
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_oci_archive(dest, PAUSE_IMAGE, layer, {"Entrypoint": ["/pause"]})
    build._record_build("image-pause", dest.stem, time.monotonic() - t0)
    return ImageArchive(PAUSE_IMAGE, dest)


def _static_binary(path: Path, what: str, hint: str) -> None:
    """Raise unless `path` is a static ELF binary (no program interpreter): it must run
    in an image that has no dynamic loader."""
    elf = subprocess.run(["readelf", "-l", str(path)], capture_output=True, text=True)
    if elf.returncode != 0 or "INTERP" in elf.stdout:
        raise ImageBuildError(f"{what}: {path} is not a static binary ({hint})")


def _busybox_binary() -> bytes:
    if not BUSYBOX_BINARY.exists():
        raise ImageBuildError(
            f"busybox image: {BUSYBOX_BINARY} missing (apt-get install busybox-static)"
        )
    # Debian's dynamic busybox also installs /bin/busybox; it cannot run in an empty image.
    _static_binary(BUSYBOX_BINARY, "busybox image", "apt-get install busybox-static")
    return BUSYBOX_BINARY.read_bytes()


def _busybox_layer() -> bytes:
    """/bin/busybox with a symlink per applet, /etc/passwd and /etc/group, /tmp (1777)."""
    applets = subprocess.run(
        [str(BUSYBOX_BINARY), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    files: dict[str, tuple[bytes | None, int, str | None]] = {
        d: (None, 0o755, None) for d in ("bin", "etc", "tmp", "root", "proc", "sys", "dev")
    }
    files["tmp"] = (None, 0o1777, None)
    files["bin/busybox"] = (_busybox_binary(), 0o755, None)
    for applet in applets:
        if applet != "busybox":
            files[f"bin/{applet}"] = (None, 0o777, "busybox")
    files["etc/passwd"] = (
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        0o644,
        None,
    )
    files["etc/group"] = (b"root:x:0:\nnogroup:x:65534:\n", 0o644, None)
    return _tar_layer(files)


def build_busybox_image() -> ImageArchive:
    """A minimal image: busybox-static as /bin/busybox plus /bin/<applet> symlinks."""
    dest = _cached("busybox", _busybox_binary())
    if dest.exists():
        return ImageArchive(BUSYBOX_IMAGE, dest)
    t0 = time.monotonic()
    layer = _busybox_layer()
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_oci_archive(
        dest,
        BUSYBOX_IMAGE,
        layer,
        {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
    )
    build._record_build("image-busybox", dest.stem, time.monotonic() - t0)
    return ImageArchive(BUSYBOX_IMAGE, dest)


def rclone_image_ref(version: str | None = None) -> str:
    """The rclone image's reference at `version` (default: versions.toml's)."""
    return RCLONE_IMAGE.format(version=version or build.load_versions()["rclone"]["version"])


def build_rclone_image(rclone: Path | None = None) -> ImageArchive:
    """The export Job's image: the busybox layer plus ``/usr/local/bin/rclone``.

    `rclone`: the binary (default: the test tools' build at versions.toml's version, built
    if missing). Keyed by the binary and busybox: a rebuilt rclone makes a new archive.
    The build's steps go to ``<cache>/logs/image-rclone.log`` (names, sizes, digests: no
    environment, no secrets).
    """
    version = build.load_versions()["rclone"]["version"]
    binary_path = rclone or build.build_rclone(version)
    _static_binary(binary_path, "rclone image", "build it with CGO_ENABLED=0")
    binary = binary_path.read_bytes()
    ref = rclone_image_ref(version)
    dest = _cached("rclone", ref.encode() + _busybox_binary() + binary)
    if dest.exists():
        return ImageArchive(ref, dest)
    t0 = time.monotonic()
    rclone_layer = _tar_layer(
        {
            "usr": (None, 0o755, None),
            "usr/local": (None, 0o755, None),
            "usr/local/bin": (None, 0o755, None),
            "usr/local/bin/rclone": (binary, 0o755, None),
            # The upstream image's config and data directories (its WORKDIR is /data).
            "config": (None, 0o777, None),
            "data": (None, 0o777, None),
        }
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_oci_archive(
        dest,
        ref,
        [_busybox_layer(), rclone_layer],
        {
            # As upstream's image: `rclone` is the entrypoint; the Job gives its own command.
            "Entrypoint": ["rclone"],
            "Env": ["PATH=/usr/local/bin:/bin", "XDG_CONFIG_HOME=/config"],
            "WorkingDir": "/data",
        },
    )
    took = time.monotonic() - t0
    log = build.cache_dir() / "logs" / "image-rclone.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(
            f"{datetime.now(UTC).isoformat(timespec='seconds')} {ref}: rclone "
            f"{binary_path} ({len(binary)} bytes, sha256 {hashlib.sha256(binary).hexdigest()}) "
            f"on busybox {BUSYBOX_BINARY}; wrote {dest} ({dest.stat().st_size} bytes) "
            f"in {took:.1f}s\n"
        )
    build._record_build("image-rclone", dest.stem, took)
    return ImageArchive(ref, dest)


def build_node_images() -> list[ImageArchive]:
    """Every image the real node imports at start (pause first: pods need it)."""
    return [build_pause_image(), build_busybox_image()]
