"""The pure parts of Kubernetes event hubs: which events are warm (placeholder sums), the
export target check, and the export Job's spec and environment (no secret in the spec)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from hubfleet import events
from hubfleet.events import EventRefused
from hubfleet.model import Cluster, ExportTarget, Hub, HubKind, PreWarm, Provider
from tasks.export import ExportFailed
from tasks.kube_export import UserVolume, credential_env, job_manifest, rclone_remote

T0 = datetime(2027, 3, 15, 8, 0, tzinfo=UTC)


def event_hub(name: str, start: datetime, hours: int = 4, **event: object) -> Hub:
    return Hub.model_validate(
        {
            "name": name,
            "domain": f"{name}.k.hubfleet.test",
            "tier": "prod",
            "kind": "event",
            "event": {
                "start": start,
                "end": start + timedelta(hours=hours),
                "attendees": 10,
                "organizers": ["o@example.org"],
                "data_policy": "export",
                "export": {"url": "s3://bucket/events", "credentials": "aws-export"},
                **event,
            },
        }
    )


CLUSTER = Cluster(
    name="k",
    provider=Provider.kubeconfig,
    kubeconfig={"context": "c"},  # type: ignore[arg-type]
    hubs=[
        event_hub("a", T0),
        event_hub("b", T0, prewarm=PreWarm(lead_time=timedelta(hours=2), size=4)),
        event_hub("c", T0 + timedelta(days=2)),
        Hub(name="s", domain="s.k.hubfleet.test", tier="prod", kind=HubKind.standing),
    ],
)
ALL = {"a": True, "b": True, "c": True, "s": True}


def test_placeholders_are_the_sum_over_the_clusters_warm_events() -> None:
    # During a and b (both deployed): attendees of a, prewarm.size of b; c is days away.
    assert events.warm_hubs(CLUSTER, T0 + timedelta(hours=1), ALL) == {"a": 10, "b": 4}
    # Expiring a lowers the sum to what b still needs, not to zero.
    assert events.warm_hubs(CLUSTER, T0 + timedelta(hours=1), ALL, exclude="a") == {"b": 4}
    # b is warm from start - lead time; a (no prewarm: no lead) only from its start.
    assert events.warm_hubs(CLUSTER, T0 - timedelta(hours=1), ALL) == {"b": 4}
    # A hub not deployed holds no placeholders unless it is the one being created now.
    absent = {**ALL, "a": False}
    assert events.warm_hubs(CLUSTER, T0 + timedelta(hours=1), absent) == {"b": 4}
    assert events.warm_hubs(CLUSTER, T0, absent, include="a") == {"a": 10, "b": 4}
    # After the end nothing is warm; standing hubs never count.
    assert events.warm_hubs(CLUSTER, T0 + timedelta(hours=5), ALL) == {}


def test_an_extension_keeps_an_event_warm_past_its_fleet_end() -> None:
    spec = CLUSTER.hub("a").event
    assert spec is not None
    ext = {("k", "a"): events.Extension(spec.end + timedelta(hours=3), spec.end)}
    later = T0 + timedelta(hours=5)
    assert events.warm_hubs(CLUSTER, later, ALL, ext) == {"a": 10}


def test_a_kubernetes_hub_cannot_export_to_a_local_directory() -> None:
    hub = event_hub("d", T0)
    assert hub.event is not None
    local_target = hub.model_copy(
        update={"event": hub.event.model_copy(update={"export": ExportTarget(url="file:///srv/x")})}
    )
    with pytest.raises(EventRefused, match=r"k/d: event.export.url 'file:///srv/x'.*s3://"):
        events.export_url(CLUSTER, local_target, "/data", "S")
    assert events.export_url(CLUSTER, hub, "/data", "S") == "s3://bucket/events/k/d/S"


def test_export_job_mounts_every_home_read_only_and_holds_no_secret() -> None:
    volumes = [UserVolume("claim-alice", "alice"), UserVolume("claim-bob", "bob")]
    job = job_manifest("hubfleet-export-s", "s3://b/p/k/h/S", volumes, "hubfleet-export-s", 600)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert [(m["name"], m["mountPath"], m["readOnly"]) for m in container["volumeMounts"]] == [
        ("claim-alice", "/homes/alice", True),
        ("claim-bob", "/homes/bob", True),
    ]
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in pod["volumes"])
    assert container["envFrom"] == [{"secretRef": {"name": "hubfleet-export-s"}}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HUBFLEET_EXPORT_REMOTE"] == ":s3:b/p/k/h/S"
    # The script reads the mount root from the env (the integration test's stand-in points
    # it at a temp dir), and no secret is in the spec: it comes from the Secret only.
    assert env["HUBFLEET_HOMES"] == "/homes" and "/homes" not in container["command"][-1]
    assert not any(k.startswith("RCLONE_") for k in env)
    assert job["spec"]["activeDeadlineSeconds"] == 600 and pod["restartPolicy"] == "Never"


def test_export_job_image_is_the_rclone_the_tests_build() -> None:
    """A floating image tag would run an rclone the tests never ran; the pinned tag must be
    the version testenv/versions.toml builds for the integration tests."""
    from testenv.build import load_versions

    job = job_manifest("j", "s3://b/p", [UserVolume("claim-a", "a")], "j", 600)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    version = load_versions()["rclone"]["version"]
    assert container["image"] == f"rclone/rclone:{version}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    # The image the real test node imports answers for exactly this reference (containerd
    # names Docker Hub images docker.io/...), so the Job runs it with no override.
    from testenv.images import rclone_image_ref

    assert rclone_image_ref() == f"docker.io/{container['image']}"


def test_export_job_prefers_user_nodes_and_requires_no_label() -> None:
    """z2jh only prefers user-purpose nodes by default: a required nodeSelector would leave
    the Job Pending forever on a cluster whose nodes lack the label (the volumes' own node
    affinity places the pod where they attach)."""
    job = job_manifest("j", "s3://b/p", [UserVolume("claim-a", "a")], "j", 600)
    pod = job["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod
    affinity = pod["affinity"]["nodeAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity
    (preferred,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["preference"]["matchExpressions"] == [
        {"key": "hub.jupyter.org/node-purpose", "operator": "In", "values": ["user"]}
    ]
    assert {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user",
            "effect": "NoSchedule"} in pod["tolerations"]  # fmt: skip


def test_credential_env_from_the_blocks() -> None:
    aws = SimpleNamespace(
        aws_access_key_id="AKIA",
        aws_secret_access_key=SecretStr("s3cr3t"),
        aws_session_token=None,
        region_name="eu-west-1",
        aws_client_parameters=SimpleNamespace(endpoint_url="http://127.0.0.1:5000"),
    )
    env = credential_env("s3://b/p", aws)
    assert env["RCLONE_S3_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert env["RCLONE_S3_ENDPOINT"] == "http://127.0.0.1:5000"
    assert env["RCLONE_S3_PROVIDER"] == "Other"
    assert credential_env("s3://b/p", None) == {
        "RCLONE_S3_PROVIDER": "AWS",
        "RCLONE_S3_ENV_AUTH": "true",
    }
    azure = SimpleNamespace(
        connection_string=SecretStr(
            "DefaultEndpointsProtocol=http;AccountName=dev;AccountKey=a2V5;"
            "BlobEndpoint=http://127.0.0.1:10000/dev;"
        )
    )
    # The connection string reaches rclone whole (endpoint, key or SAS, endpoint suffix).
    assert credential_env("az://c/p", azure) == {
        "RCLONE_AZUREBLOB_CONNECTION_STRING": azure.connection_string.get_secret_value()
    }
    assert credential_env("az://c/p", None) == {"RCLONE_AZUREBLOB_ENV_AUTH": "true"}
    assert credential_env("gs://b/p", None)["RCLONE_GCS_ENV_AUTH"] == "true"
    with pytest.raises(ExportFailed, match="use s3://, az:// or gs://"):
        rclone_remote("file:///tmp/x")
