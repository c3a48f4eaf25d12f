"""A cluster's client-side API rate limit (cluster.yaml `api_qps`, `api_burst`): validated
with file:line messages, passed to helm as its global flags (read back from the real helm's
`helm env`), and a token bucket in front of hubfleet's own Kubernetes client."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from hubfleet.charts import find_helm
from hubfleet.loader import FleetInvalid, load_fleet
from hubfleet.model import DEFAULT_API_BURST, DEFAULT_API_QPS
from tasks.helm import Helm
from tasks.kube import ApiLimits, TokenBucket, cluster_bucket

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "clusters/byo-kube/cluster.yaml"


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    shutil.copytree(REPO / "fleet", root)
    return root


def set_limits(root: Path, text: str) -> None:
    path = root / CLUSTER
    path.write_text(
        path.read_text().replace("provider: kubeconfig\n", f"provider: kubeconfig\n{text}")
    )


def problems(root: Path) -> list[str]:
    with pytest.raises(FleetInvalid) as info:
        load_fleet(root)
    return [str(p).replace(str(root), "<fleet>") for p in info.value.problems]


def test_defaults_and_settings(fleet: Path) -> None:
    spec = load_fleet(fleet).cluster("byo-kube")
    assert (spec.api_qps, spec.api_burst) == (DEFAULT_API_QPS, DEFAULT_API_BURST)
    set_limits(fleet, "api_qps: 7.5\napi_burst: 15\n")
    spec = load_fleet(fleet).cluster("byo-kube")
    assert ApiLimits.of(spec) == ApiLimits(7.5, 15)
    assert ApiLimits.of(spec).helm_args() == ["--qps", "7.5", "--burst-limit", "15"]
    assert ApiLimits(0, 15).helm_args()[:2] == ["--qps", "-1"]  # off: client-go's "no limit"


def test_bad_values_name_file_line_field_and_value(fleet: Path) -> None:
    set_limits(fleet, "api_qps: -2\napi_burst: 0\n")
    assert problems(fleet) == [
        f"<fleet>/{CLUSTER}:4: api_qps: found -2; input should be greater than or equal to 0",
        f"<fleet>/{CLUSTER}:5: api_burst: found 0; input should be greater than or equal to 1",
    ]
    shutil.copy(REPO / "fleet" / CLUSTER, fleet / CLUSTER)
    set_limits(fleet, "api_qps: fast\n")
    (message,) = problems(fleet)
    assert message.startswith(f"<fleet>/{CLUSTER}:4: api_qps: ") and "'fast'" in message


def test_helm_gets_the_flags_on_cluster_commands_only() -> None:
    """`helm env` prints the settings helm parsed: the flags reach helm as given."""
    helm = Helm(None, rate_limit=ApiLimits(12, 34).helm_args(), binary=find_helm())
    try:
        out = helm.run("env")
    finally:
        helm.close()
    assert 'HELM_QPS="12.00"' in out and 'HELM_BURST_LIMIT="34"' in out


def test_token_bucket_holds_callers_to_qps_after_the_burst() -> None:
    bucket = TokenBucket(qps=20, burst=5)
    calls: list[float] = []
    start = time.monotonic()

    def call() -> None:
        for _ in range(5):
            bucket.acquire()
            calls.append(time.monotonic() - start)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 25 requests: 5 at once, then 20 at 20 a second -> about 1 s, never much faster.
    assert len(calls) == 25
    assert 0.9 <= max(calls) < 2.0, max(calls)
    assert sum(1 for c in calls if c < 0.05) <= 6  # the burst, and nothing more, at once
    assert cluster_bucket("c1", ApiLimits(20, 5)) is cluster_bucket("c1", ApiLimits(20, 5))
    assert cluster_bucket("c1", ApiLimits(20, 5)) is not cluster_bucket("c1", ApiLimits(9, 5))
