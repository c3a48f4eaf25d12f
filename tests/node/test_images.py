"""The node's images are valid OCI image layouts, built the same way twice (content
addressed), with a static pause binary that really pauses and exits on SIGTERM."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import tarfile
import time

from testenv import images


def _members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out[m.name] = f.read() if f else b""
        return out


def test_archives_are_oci_layouts_naming_their_image():
    for archive in images.build_node_images():
        files = _members(archive.path)
        assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
        (desc,) = json.loads(files["index.json"])["manifests"]
        assert desc["annotations"]["io.containerd.image.name"] == archive.ref
        manifest = files[f"blobs/sha256/{desc['digest'].split(':')[1]}"]
        assert hashlib.sha256(manifest).hexdigest() == desc["digest"].split(":")[1]
        manifest_json = json.loads(manifest)
        config = json.loads(files[f"blobs/sha256/{manifest_json['config']['digest'][7:]}"])
        (layer_desc,) = manifest_json["layers"]
        layer = files[f"blobs/sha256/{layer_desc['digest'][7:]}"]
        # Uncompressed layer: its digest is also the diff id the config lists.
        assert config["rootfs"]["diff_ids"] == [layer_desc["digest"]]
        assert hashlib.sha256(layer).hexdigest() == layer_desc["digest"][7:]


def test_layers_are_reproducible(tmp_path):
    busybox = images.build_busybox_image()
    layer_digest = json.loads(_members(busybox.path)["index.json"])["manifests"][0]["digest"]
    # Rebuild into a fresh cache: the same inputs give the same manifest digest.
    busybox.path.rename(tmp_path / "old.tar")
    try:
        again = images.build_busybox_image()
        digest = json.loads(_members(again.path)["index.json"])["manifests"][0]["digest"]
        assert digest == layer_digest
    finally:
        if not busybox.path.exists():
            (tmp_path / "old.tar").rename(busybox.path)


def test_pause_binary_is_static_and_stops_on_sigterm(tmp_path):
    archive = images.build_pause_image()
    with tarfile.open(archive.path) as tar:
        manifest_name = next(
            m.name
            for m in tar.getmembers()
            if m.name.startswith("blobs/") and m.size > 100_000  # the layer
        )
        layer = tar.extractfile(manifest_name)
        assert layer is not None
        (tmp_path / "layer.tar").write_bytes(layer.read())
    with tarfile.open(tmp_path / "layer.tar") as layer_tar:
        layer_tar.extract("pause", tmp_path, filter="data")
    binary = tmp_path / "pause"
    # No program interpreter (dynamic loader): it runs in an image with nothing else in it.
    headers = subprocess.run(
        ["readelf", "-l", binary], capture_output=True, text=True, check=True
    ).stdout
    assert "LOAD" in headers and "INTERP" not in headers
    proc = subprocess.Popen([binary])
    try:
        time.sleep(0.3)
        assert proc.poll() is None  # it pauses
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_rclone_image_is_busybox_plus_the_rclone_the_tools_build(rclone, tmp_path):
    """The export Job's image: named as tasks/kube_export.py names it (so no override),
    the busybox image's layer first (containerd shares its snapshot), then rclone itself."""
    from tasks.kube_export import RCLONE_IMAGE
    from testenv.build import load_versions

    archive = images.build_rclone_image(rclone)
    assert archive.ref == f"docker.io/{RCLONE_IMAGE}"
    assert archive.ref.endswith(":" + load_versions()["rclone"]["version"])
    assert images.build_rclone_image(rclone) == archive  # cached by content
    files = _members(archive.path)
    (desc,) = json.loads(files["index.json"])["manifests"]
    manifest = json.loads(files[f"blobs/sha256/{desc['digest'][7:]}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'][7:]}"])
    assert config["config"]["Entrypoint"] == ["rclone"]
    base, top = (files[f"blobs/sha256/{layer['digest'][7:]}"] for layer in manifest["layers"])
    busybox = _members(images.build_busybox_image().path)
    (busybox_desc,) = json.loads(busybox["index.json"])["manifests"]
    busybox_manifest = json.loads(busybox[f"blobs/sha256/{busybox_desc['digest'][7:]}"])
    assert hashlib.sha256(base).hexdigest() == busybox_manifest["layers"][0]["digest"][7:]
    (tmp_path / "top.tar").write_bytes(top)
    with tarfile.open(tmp_path / "top.tar") as layer:
        layer.extract("usr/local/bin/rclone", tmp_path, filter="data")
    binary = tmp_path / "usr" / "local" / "bin" / "rclone"
    assert binary.read_bytes() == rclone.read_bytes()
    version = subprocess.run([binary, "version"], capture_output=True, text=True, check=True)
    assert f"rclone v{load_versions()['rclone']['version']}" in version.stdout
