"""The pure parts of a Kubernetes hub's teardown: what an archived home volume carries
(reclaim policy Retain, whose it was, when), what dropping one sets, and which hubs have
their homes exported rather than archived when the data is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from flows.operation import HubOperation
from flows.teardown_hub import export_target
from hubfleet.model import Cluster, Fleet, FleetSettings, Hub, HubKind, Provider
from tasks.kube_archive import (
    ARCHIVED_AT,
    ARCHIVED_CLAIM,
    ARCHIVED_CLUSTER,
    ARCHIVED_HUB,
    ARCHIVED_USER,
    DROP_PATCH,
    HomeVolume,
    archive_patch,
)

AT = datetime(2027, 3, 15, 18, 30, 5, 123456, tzinfo=UTC)


def test_an_archived_volume_is_retained_and_says_whose_it_was() -> None:
    home = HomeVolume("claim-alice", "alice", "pvc-1234")
    patch = archive_patch("gcp-central", "college", home, AT)
    assert patch["spec"] == {"persistentVolumeReclaimPolicy": "Retain"}
    assert patch["metadata"]["labels"] == {
        ARCHIVED_HUB: "college",
        ARCHIVED_CLUSTER: "gcp-central",
        ARCHIVED_USER: "alice",
    }
    assert patch["metadata"]["annotations"] == {
        ARCHIVED_AT: "2027-03-15T18:30:05+00:00",
        ARCHIVED_CLAIM: "college/claim-alice",
    }
    # Label keys and values are valid Kubernetes labels (DNS-safe names, <= 63 chars).
    for key, value in patch["metadata"]["labels"].items():
        assert key.startswith("hubfleet.io/") and len(value) <= 63


def test_dropping_a_volume_only_sets_delete() -> None:
    assert DROP_PATCH == {"spec": {"persistentVolumeReclaimPolicy": "Delete"}}


def _op(hub: Hub) -> HubOperation:
    cluster = Cluster(
        name="k",
        provider=Provider.kubeconfig,
        kubeconfig={"context": "c"},  # type: ignore[arg-type]
        hubs=[hub],
    )
    fleet = Fleet(root=Path("."), settings=FleetSettings(name="f"), clusters=[cluster])
    return HubOperation(
        name="teardown_hub", fleet=fleet, operator="ops", revision="rev", cluster=cluster, hub=hub
    )


def _event(name: str, **event: object) -> Hub:
    start = datetime(2027, 3, 15, 8, tzinfo=UTC)
    return Hub.model_validate(
        {
            "name": name,
            "domain": f"{name}.k.hubfleet.test",
            "tier": "prod",
            "kind": "event",
            "event": {
                "start": start,
                "end": start + timedelta(hours=4),
                "attendees": 10,
                "organizers": ["o@example.org"],
                **event,
            },
        }
    )


def test_only_an_event_with_an_export_destination_is_exported() -> None:
    export = {"url": "s3://bucket/events", "credentials": "aws-export"}
    exported = export_target(_op(_event("e", data_policy="export", export=export)), "S")
    assert exported == ("s3://bucket/events/k/e/S", "aws-export")
    # data_policy delete with a destination: kept data is archived, not exported.
    assert export_target(_op(_event("d", data_policy="delete", export=export)), "S") is None
    standing = Hub(name="s", domain="s.k.hubfleet.test", tier="prod", kind=HubKind.standing)
    assert export_target(_op(standing), "S") is None
