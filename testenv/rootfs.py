"""A Debian base root filesystem for the images the real node runs (later: hub, proxy,
single-user, worker), built here with debootstrap from Debian's packages: no registry.

``build_debian_base()`` runs ``debootstrap --variant=minbase`` with Python 3 (and venv)
included, strips what must not ship (apt lists and caches, the host's resolv.conf and
hostname), and packs it as an OCI archive with one uncompressed layer (uncompressed: gzip
of ~200 MB costs minutes on a busy 2-core machine; import does not need it). The archive
is cached under ``<cache>/images/debian-base-<key>.tar`` where the key hashes every input
(suite, mirror, packages, this recipe's version), so a change to any of them builds anew
and an unchanged recipe is never rebuilt.

Images derived from it must, when they run pip inside the root filesystem, copy the host's
CA bundle in for the build only and delete it before packing (the registries are reached
through a TLS-intercepting proxy whose CA only the host trusts).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from . import build, images

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv")
RECIPE_VERSION = "1"  # bump when the steps below change what ends up in the image
# Directories the runtime mounts over (or that hold only build leftovers): ship them empty.
EMPTY_DIRS = ("dev", "proc", "sys", "run", "tmp", "var/cache/apt", "var/lib/apt/lists")
# Host details debootstrap copies in; they must not ship in an image.
HOST_FILES = ("etc/resolv.conf", "etc/hostname")


def base_key() -> str:
    inputs = json.dumps(
        {"suite": SUITE, "mirror": MIRROR, "packages": PACKAGES, "recipe": RECIPE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def base_image_ref() -> str:
    return f"hubfleet.local/debian-base:{base_key()}"


def _layer_from_dir(root: Path) -> bytes:
    """An uncompressed tar layer of ``root``, owners and modes as on disk, paths sorted."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(root)
            for name in sorted(dirnames) + sorted(filenames):
                path = Path(dirpath) / name
                rel = (rel_dir / name).as_posix()
                info = tar.gettarinfo(str(path), arcname=rel)
                if info.isdev():
                    continue  # the runtime provides /dev
                if info.isreg():
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


@build.serialized
def build_debian_base(progress=print) -> images.ImageArchive:
    """Build (or reuse) the Debian base image; returns its OCI archive."""
    ref = base_image_ref()
    dest = images.images_dir() / f"debian-base-{base_key()}.tar"
    if dest.exists():
        return images.ImageArchive(ref, dest)
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise images.ImageBuildError(
            "debian base: debootstrap not found (apt-get install debootstrap; ./dev test does)"
        )
    t0 = time.monotonic()
    work = build.cache_dir() / "build" / f"debian-base-{base_key()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    root = work / "rootfs"
    progress(f"  debian base ({SUITE}, minbase + {', '.join(PACKAGES)}): debootstrap ...")
    try:
        proc = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(root),
                MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            log = root / "debootstrap" / "debootstrap.log"
            detail = log.read_text()[-3000:] if log.exists() else proc.stdout[-3000:]
            raise images.ImageBuildError(
                f"debian base: debootstrap exited {proc.returncode}:\n{proc.stderr[-2000:]}\n"
                f"{detail}"
            )
        for rel in HOST_FILES:
            (root / rel).unlink(missing_ok=True)
        for rel in EMPTY_DIRS:
            d = root / rel
            if d.is_dir():
                for child in d.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        for deb in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        layer = _layer_from_dir(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        images.write_oci_archive(
            dest,
            ref,
            layer,
            {
                "Cmd": ["/bin/bash"],
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "WorkingDir": "/",
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    build._record_build("image-debian-base", base_key(), time.monotonic() - t0)
    return images.ImageArchive(ref, dest)
