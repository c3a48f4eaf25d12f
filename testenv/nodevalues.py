"""Zero to JupyterHub values for the test cluster's real node: its images built here, its
placement, and each chart feature the node cannot run turned off, with the reason.

Used as the `cluster.values.yaml` of test clusters whose hubs run on the real node (and by
the plain-helm z2jh test), so that hubfleet's own layering carries them, as an operator's
cluster file would.
"""

from __future__ import annotations

from typing import Any

from testenv.node import POD_PLACEMENT, STORAGE_CLASS


def image(ref: str) -> dict[str, str]:
    """A z2jh image value for an image imported into the node (never pulled)."""
    name, tag = ref.rsplit(":", 1)
    return {"name": name, "tag": tag, "pullPolicy": "Never"}


def node_values(images: dict[str, str]) -> dict[str, Any]:
    """z2jh values (top level) for hubs on the real node; `images`: k8s-hub, proxy and
    singleuser image references (testenv.hubimages)."""
    placement = {"nodeSelector": POD_PLACEMENT["nodeSelector"]}
    tolerations = POD_PLACEMENT["tolerations"]
    return {
        "hub": {
            "image": image(images["k8s-hub"]),
            **placement,
            "tolerations": tolerations,
            # The hub's SQLite database on a PVC (the chart's default db type), provisioned
            # on the node's disk by the local-path provisioner.
            "db": {"pvc": {"storageClassName": STORAGE_CLASS}},
            # The bridge CNI does not enforce NetworkPolicy: objects it would ignore would
            # only pretend to isolate pods. Off for hub, proxy and single-user pods.
            "networkPolicy": {"enabled": False},
            "extraConfig": {
                # No cluster DNS runs beside the node, so the Service names the chart's
                # config uses ("proxy-api", "hub") do not resolve in pods. The same Services
                # are reached by the ClusterIPs the kubelet puts in every pod's environment
                # (the chart's get_name_env reads them).
                "zz-service-ips": (
                    "def _svc(name):\n"
                    "    host = get_name_env(name, '_SERVICE_HOST')\n"
                    "    port = get_name_env(name, '_SERVICE_PORT')\n"
                    "    return f'http://{host}:{port}'\n"
                    "c.ConfigurableHTTPProxy.api_url = _svc('proxy-api')\n"
                    "c.JupyterHub.hub_connect_url = _svc('hub')\n"
                ),
            },
        },
        "proxy": {
            # https off (the chart's default, stated): no ACME server or certificates here,
            # so neither traefik nor secret-sync runs.
            "https": {"enabled": False},
            "chp": {
                "image": image(images["proxy"]),
                **placement,
                "tolerations": tolerations,
                "networkPolicy": {"enabled": False},
                # As hub.extraConfig above: the hub by its Service's ClusterIP, which the
                # kubelet expands from the pod's environment ($(VAR) in the command).
                "defaultTarget": "http://$(HUB_SERVICE_HOST):$(HUB_SERVICE_PORT)",
                "errorTarget": "http://$(HUB_SERVICE_HOST):$(HUB_SERVICE_PORT)/hub/error",
            },
            "traefik": {"networkPolicy": {"enabled": False}},
        },
        "singleuser": {
            "image": image(images["singleuser"]),
            **placement,
            "extraTolerations": tolerations,
            "networkPolicy": {"enabled": False},
            # blockWithIptables adds a privileged init container (the network-tools image)
            # that blocks the cloud metadata server: there is none here, and the node's pods
            # have no route off this machine at all.
            "cloudMetadata": {"blockWithIptables": False},
            # No home PVC per user: the hub's PVC above already proves the provisioner; a
            # user volume would only slow the spawn on a shared 2-core machine.
            "storage": {"type": "none"},
            # The chart guarantees 1G per user; the shared test machine keeps it small.
            "memory": {"guarantee": "64M"},
            "startTimeout": 240,
        },
        "scheduling": {
            # user-scheduler: a kube-scheduler image (registry.k8s.io) we do not build; the
            # test cluster's own scheduler places user pods.
            "userScheduler": {"enabled": False},
            # user placeholders: pause pods for headroom on autoscaled clusters; there is
            # one fixed node here.
            "userPlaceholder": {"enabled": False},
            "podPriority": {"enabled": False},
        },
        # The image pullers (the image-awaiter hook Job and the puller DaemonSets) pull from
        # registries; here images are imported into containerd and never pulled.
        "prePuller": {"hook": {"enabled": False}, "continuous": {"enabled": False}},
    }
