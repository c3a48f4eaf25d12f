"""The real test environment: a local Kubernetes control plane (etcd, kube-apiserver,
controller-manager, scheduler, kwok), helm and terraform/OpenTofu built from the Go module
proxy into ${HUBFLEET_CACHE_DIR:-~/.cache/hubfleet}, and cloud emulators (moto, Azurite).

Modules: ``build`` (ensure_tools), ``controlplane`` (ControlPlane), ``emulators``
(MotoServer, Azurite), ``cli`` (``hubfleet testenv``), ``pytest_plugin`` (fixtures).
Versions are pinned in ``versions.toml``.
"""
