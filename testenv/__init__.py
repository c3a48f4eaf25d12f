"""The real test environment: a local Kubernetes control plane (etcd, kube-apiserver,
controller-manager, scheduler, kwok), helm and terraform/OpenTofu built from the Go module
proxy into ${HUBFLEET_CACHE_DIR:-~/.cache/hubfleet}, and cloud emulators (moto, Azurite).

Dev-only: a top-level package of the checkout, not in the wheel (the installed hubfleet
never imports it). Every server the tests start lives here: the control plane and the real
node (``controlplane``, ``node``, ``_proc``), the emulators (``emulators``: MotoServer,
Azurite), the loopback chart repository (``chartrepo``); ``build`` (ensure_tools) and the
images (``images``, ``rootfs``, ``hubimages``); ``cli`` (``./dev testenv``, ``python -m
testenv``); ``pytest_plugin`` (fixtures). Versions are pinned in ``versions.toml``.
"""
