"""The hub chart: the upstream Zero to JupyterHub chart under hubfleet's thin wrapper.

A hub is a release of `helm/hub`, which depends on `jupyterhub` from the z2jh chart
repository exactly as 2i2c's basehub does: z2jh values nest under `jupyterhub:`, and the
wrapper adds only what z2jh lacks (an optional Dask Gateway, `daskGateway:`). The z2jh
version comes from `fleet.yaml: chart_version`, or a hub's own `chart_version` (a canary).

For a version, `hub_chart` assembles a ready-to-install chart directory in the cache:
the wrapper's files with that version in `Chart.yaml`, and the z2jh package, fetched once
with `helm pull` from the chart repository (`fleet.yaml: chart_repository`, or
`HUBFLEET_CHART_REPOSITORY` for a mirror) and kept by version, so deploys never refetch.
Beside it goes `hubfleet.schema.json`: the wrapper's schema with z2jh's own
`values.schema.json` at `jupyterhub`, which `hubfleet validate` and every deploy check
merged values against, naming the file and line of each problem.

No Prefect here: `validate` and `show` use this too and stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from hubfleet.errors import HubfleetError
from hubfleet.paths import REPO_ROOT, cache_dir

#: hubfleet's wrapper chart (sources; never installed from here, see `hub_chart`).
WRAPPER = REPO_ROOT / "helm" / "hub"
#: Where the upstream chart comes from, unless the fleet or the environment says otherwise.
Z2JH_REPOSITORY = "https://hub.jupyter.org/helm-chart/"
Z2JH_CHART = "jupyterhub"
#: The wrapper's key for z2jh's values (the dependency's name, as in basehub).
Z2JH_KEY = "jupyterhub"
SCHEMA_FILE = "hubfleet.schema.json"


class ChartUnavailable(HubfleetError):
    """The z2jh chart at a version could not be fetched; nothing was changed."""


def repository(fleet_setting: str | None = None) -> str:
    """The chart repository: `HUBFLEET_CHART_REPOSITORY` (a mirror, or the tests' local
    repository), else the fleet's `chart_repository`, else z2jh's own."""
    return os.environ.get("HUBFLEET_CHART_REPOSITORY") or fleet_setting or Z2JH_REPOSITORY


def find_helm() -> Path:
    """helm: `HUBFLEET_HELM`, then PATH, then the one a checkout's `./dev testenv build`
    makes (in the cache)."""
    candidates = [os.environ.get("HUBFLEET_HELM"), shutil.which("helm")]
    candidates += [str(p) for p in sorted((cache_dir() / "bin").glob("helm-*"), reverse=True)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise HelmNotFound(
        "helm not found: set HUBFLEET_HELM or put helm 3 on PATH (in a hubfleet checkout, "
        "`./dev testenv build` builds one)"
    )


class HelmNotFound(HubfleetError):
    """No helm binary; the message says where it was looked for."""


def z2jh_package(version: str, repo: str | None = None) -> Path:
    """`jupyterhub-<version>.tgz`, from the cache or fetched once from the repository."""
    store = cache_dir() / "charts"
    package = store / f"{Z2JH_CHART}-{version}.tgz"
    if package.is_file():
        return package
    repo = repository(repo)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store, prefix=".pull-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
        env.update(
            {f"HELM_{k}_HOME": str(Path(tmp) / k.lower()) for k in ("CONFIG", "CACHE", "DATA")}
        )
        try:
            proc = subprocess.run(
                [str(find_helm()), "pull", Z2JH_CHART, "--repo", repo, "--version", version,
                 "--destination", tmp],
                env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ChartUnavailable(
                f"fetching {Z2JH_CHART} {version} from {repo} took over 300s"
            ) from None
        fetched = Path(tmp) / package.name
        if proc.returncode != 0 or not fetched.is_file():
            raise ChartUnavailable(
                f"the Zero to JupyterHub chart {version} could not be fetched from {repo}: "
                f"{(proc.stderr or proc.stdout).strip()[-400:]}\nFix chart_version (fleet.yaml "
                "or the hub's), or chart_repository / HUBFLEET_CHART_REPOSITORY. "
                "Nothing was changed."
            )
        os.replace(fetched, package)
    return package


def _wrapper_digest() -> str:
    """The wrapper's sources, hashed: an assembled chart is rebuilt when they change."""
    digest = hashlib.sha256()
    for path in sorted(p for p in WRAPPER.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(WRAPPER)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def hub_chart(version: str, repo: str | None = None) -> Path:
    """The installable hub chart for z2jh `version`: the wrapper, that version in its
    `Chart.yaml` (helm's history then names it `hub-<version>`), z2jh in `charts/`, and
    the combined schema. Cached by version and wrapper content."""
    target = cache_dir() / "charts" / f"hub-{version}-{_wrapper_digest()}"
    if (target / SCHEMA_FILE).is_file():
        return target
    package = z2jh_package(version, repo)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".hub-"))
    try:
        copy_wrapper(staging, version, repo=None)  # z2jh vendored below: no repository
        (staging / "charts").mkdir(exist_ok=True)
        shutil.copy2(package, staging / "charts" / package.name)
        (staging / SCHEMA_FILE).write_text(json.dumps(_combined_schema(package)), encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:  # another process assembled it first
            if not (target / SCHEMA_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def copy_wrapper(target: Path, version: str, repo: str | None) -> None:
    """The wrapper's sources in `target`, its `Chart.yaml` at z2jh `version` (chart and
    dependency); the dependency fetched from `repo`, or, with None, from `charts/`."""
    shutil.copytree(
        WRAPPER, target, ignore=shutil.ignore_patterns("ci", "__pycache__"), dirs_exist_ok=True
    )
    yaml = YAML()
    chart = yaml.load((target / "Chart.yaml").read_text(encoding="utf-8"))
    chart["version"] = version
    for dep in chart["dependencies"]:
        if dep["name"] == Z2JH_CHART:
            dep["version"] = version
            if repo is None:
                dep.pop("repository", None)
            else:
                dep["repository"] = repo
    with (target / "Chart.yaml").open("w", encoding="utf-8") as out:
        yaml.dump(chart, out)


def _combined_schema(package: Path) -> dict[str, Any]:
    wrapper = json.loads((WRAPPER / "values.schema.json").read_text(encoding="utf-8"))
    wrapper["properties"][Z2JH_KEY] = _z2jh_file(package, "values.schema.json", json.loads)
    return dict(wrapper)


def _z2jh_file(package: Path, name: str, parse: Any) -> Any:
    with tarfile.open(package) as tar:
        member = tar.extractfile(f"{Z2JH_CHART}/{name}")
        assert member is not None, f"{package} has no {name}"
        return parse(member.read().decode("utf-8"))


def hub_schema(version: str, repo: str | None = None) -> Path:
    """The schema merged hub values are checked against, for z2jh `version`."""
    return hub_chart(version, repo) / SCHEMA_FILE


@lru_cache(maxsize=8)
def z2jh_defaults(version: str, repo: str | None = None) -> dict[str, Any]:
    """z2jh's own `values.yaml` at `version`, the first layer of every hub. Parsed once per
    version and kept as JSON beside the package: YAML parsing in pure Python costs ~0.2 s
    per version, which `validate` would pay for every canary on every run."""
    package = z2jh_package(version, repo)
    parsed = package.with_suffix(".values.json")
    if parsed.is_file():
        loaded: dict[str, Any] = json.loads(parsed.read_text(encoding="utf-8"))
        return loaded
    loaded = dict(_z2jh_file(package, "values.yaml", YAML(typ="safe").load) or {})
    tmp = parsed.with_name(f".{parsed.name}.{os.getpid()}")
    tmp.write_text(json.dumps(loaded), encoding="utf-8")
    os.replace(tmp, parsed)  # whole or absent, whoever writes it
    return loaded


def release_version(chart: str) -> str | None:
    """The z2jh version of a hub release from helm's `chart` field ('hub-4.4.1-0.dev.1' ->
    '4.4.1-0.dev.1'; a version may hold '-'), or None for another chart."""
    return chart.removeprefix("hub-") if chart.startswith("hub-") else None
