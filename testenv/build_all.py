"""Build (or reuse from the cache) everything the tests run: the Kubernetes tools, the real
node's binaries and images, the hub images, Azurite and Dex, printing each step's time.

``python -m testenv.build_all`` (called by ``./dev test``; also ``./dev testenv build``).
The builders live in their own modules; `testenv.build` is the shared low level (the Go
module proxy, the cache, versions.toml) they all use.
"""

from __future__ import annotations

import sys
import time

from . import build
from .dex import build_dex
from .hubimages import build_hub_images
from .images import ImageBuildError, build_rclone_image
from .node import ensure_node_tools
from .rootfs import build_debian_base


def main(argv: list[str] | None = None) -> int:
    """Build everything (tools + azurite), printing per-tool progress and timings."""
    where = f"{build.bin_dir()} (versions: {build.VERSIONS_FILE})"
    print(f"testenv: building tools into {where}", flush=True)

    def progress(msg: str) -> None:
        print(msg, flush=True)

    t0 = time.monotonic()
    try:
        tools = build.ensure_tools(progress)
        node = ensure_node_tools(progress)
        rclone_image = build_rclone_image(tools["rclone"])
        debian_base = build_debian_base(progress)
        hub_images = build_hub_images(progress)
        azurite = build.ensure_azurite(progress)
        dex = build_dex(progress)  # the login tests' OpenID Connect provider
    except (build.ToolBuildError, ImageBuildError) as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        return 1
    for name, path in sorted(tools.items()):
        print(f"  {name:24} {path}")
    print(f"  {'kubelet':24} {node.kubelet}")
    print(f"  {'kube-proxy':24} {node.kube_proxy}")
    print(f"  {'containerd':24} {node.containerd_dir}")
    print(f"  {'local-path-provisioner':24} {node.local_path_provisioner}")
    for image in (*node.images, rclone_image, debian_base, *hub_images):
        print(f"  {image.ref:24} {image.path}")
    print(f"  {'azurite':24} {azurite}")
    print(f"  {'dex':24} {dex}")
    print(f"all tools ready in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
