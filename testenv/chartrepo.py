"""A Helm chart repository on loopback, for tests: what `https://hub.jupyter.org/helm-chart/`
serves, made from chart packages on disk (`../shared/charts`: the Zero to JupyterHub
release, as packaged upstream). This machine cannot reach the real repository; hubfleet
fetches from this one exactly as it would from that (`helm pull --repo`), because the
tests set `HUBFLEET_CHART_REPOSITORY` to it."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml


def write_index(directory: Path) -> Path:
    """`index.yaml` for every `*.tgz` chart package in `directory` (as `helm repo index`)."""
    entries: dict[str, list[dict[str, object]]] = {}
    for package in sorted(directory.glob("*.tgz")):
        with tarfile.open(package) as tar:
            name = next(m.name for m in tar.getmembers() if m.name.endswith("/Chart.yaml"))
            member = tar.extractfile(name)
            assert member is not None
            chart = yaml.safe_load(member.read())
        chart.update(
            urls=[package.name],
            digest=hashlib.sha256(package.read_bytes()).hexdigest(),
            created=datetime.now(UTC).isoformat(),
        )
        entries.setdefault(chart["name"], []).append(chart)
    index = directory / "index.yaml"
    index.write_text(yaml.safe_dump({"apiVersion": "v1", "entries": entries}))
    return index


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


#: The version tests upgrade and canary to (see `ChartRepository.add_version`).
NEXT_VERSION = "4.4.1-0.dev.1"


class ChartRepository:
    """Serves copies of `packages` with their index on 127.0.0.1 until `stop()`."""

    def __init__(self, packages: Iterable[Path], directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        for package in packages:
            shutil.copy2(package, directory / package.name)
        write_index(directory)
        self.directory = directory
        handler = partial(_Quiet, directory=str(directory))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add_version(self, package: Path, version: str) -> Path:
        """Publish `package` again as `version`: a stand-in for a next release of the chart
        (only one real release is on this machine), identical but for its version, so
        upgrades and canaries have a version to move to. Returns the new package."""
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(package) as tar:
                tar.extractall(tmp, filter="data")
            (chart_dir,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
            chart_yaml = chart_dir / "Chart.yaml"
            chart = yaml.safe_load(chart_yaml.read_text())
            chart["version"] = version
            chart_yaml.write_text(yaml.safe_dump(chart, sort_keys=False))
            out = self.directory / f"{chart['name']}-{version}.tgz"
            with tarfile.open(out, "w:gz") as tar:
                tar.add(chart_dir, arcname=chart_dir.name)
        write_index(self.directory)
        return out

    def add(self, package: Path) -> None:
        """Publish one more package (e.g. a canary version made by a test)."""
        shutil.copy2(package, self.directory / package.name)
        write_index(self.directory)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
