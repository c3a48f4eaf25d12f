"""pytest fixtures for the real test environment.

Register with ``pytest_plugins = ["testenv.pytest_plugin"]`` (or ``-p
testenv.pytest_plugin``). Session fixtures build missing tools on first use
(the first run on a fresh machine compiles Kubernetes: 15-25 min on 2 cores), and FAIL,
never skip, when a build or start fails: a green run means the real thing was exercised.

Fixtures: ``testenv_tools`` (tool -> binary), ``kube`` (a running ControlPlane),
``real_node`` (a real kubelet node joined to ``kube``),
``kube_api`` (kubernetes.client.ApiClient as cluster admin), ``kube_namespace`` (a fresh
namespace per test), ``helm``, ``rclone``, ``terraform_bin``, ``moto_server``, ``azurite``;
for pods on the real node: ``node_moto`` and ``node_azurite`` (the same emulators on the
node's host-side address, which pods reach) and ``node_rclone_image`` (the export Job's
image, imported into the node).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import images
from .build import ToolBuildError, ensure_tools
from .controlplane import ControlPlane, ControlPlaneError
from .emulators import Azurite, EmulatorError, MotoServer
from .node import NodeTools, RealNode, RealNodeError, ensure_node_tools


def _progress(msg: str) -> None:
    # Straight to the real stderr: pytest captures fixture output, and a silent 20-minute
    # first build looks like a hang.
    print(f"[testenv] {msg}", file=sys.__stderr__, flush=True)


_TOOLS_KEY = pytest.StashKey[object]()
_NODE_TOOLS_KEY = pytest.StashKey[object]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing tools once collection shows they are needed, before any test runs.

    Doing it here, not inside a fixture, keeps a cold build (minutes) out of the
    per-test timeout. The result or the error is handed to ``testenv_tools``.
    """
    if session.config.option.collectonly:
        return
    if not any("testenv_tools" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    try:
        session.config.stash[_TOOLS_KEY] = ensure_tools(progress=_progress)
    except ToolBuildError as e:
        session.config.stash[_TOOLS_KEY] = e
    if any("real_node_tools" in getattr(item, "fixturenames", ()) for item in session.items):
        try:
            session.config.stash[_NODE_TOOLS_KEY] = ensure_node_tools(progress=_progress)
        except (ToolBuildError, images.ImageBuildError) as e:
            session.config.stash[_NODE_TOOLS_KEY] = e


@pytest.fixture(scope="session")
def testenv_tools(pytestconfig) -> dict[str, Path]:
    """Tool name -> binary: kube-apiserver, kube-controller-manager, kube-scheduler, etcd,
    kwok, helm, rclone, terraform."""
    result = pytestconfig.stash.get(_TOOLS_KEY, None)
    if result is None:
        try:
            result = ensure_tools(progress=_progress)
        except ToolBuildError as e:
            result = e
    if isinstance(result, ToolBuildError):
        pytest.fail(str(result), pytrace=False)
    return result


@pytest.fixture(scope="session")
def kube(testenv_tools) -> Iterator[ControlPlane]:
    """A running local control plane (``.kubeconfig``, ``.server``), stopped at session end."""
    cp = ControlPlane(testenv_tools, progress=_progress)
    try:
        cp.start()
    except ControlPlaneError as e:
        pytest.fail(f"control plane failed to start: {e}", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def real_node_tools(pytestconfig) -> NodeTools:
    """kubelet, kube-proxy, containerd, local-path-provisioner and the node's images
    (built before the first test when any test needs them)."""
    tools = pytestconfig.stash.get(_NODE_TOOLS_KEY, None)
    if tools is None:
        try:
            tools = ensure_node_tools(progress=_progress)
        except (ToolBuildError, images.ImageBuildError) as e:
            tools = e
    if not isinstance(tools, NodeTools):
        pytest.fail(f"building the real node failed: {tools}", pytrace=False)
    return tools


@pytest.fixture(scope="session")
def real_node(kube, real_node_tools) -> Iterator[RealNode]:
    """A real node (kubelet, containerd, CNI, kube-proxy, local-path provisioner) joined to
    ``kube``, Ready; tainted so only pods with ``node.POD_PLACEMENT`` land on it."""
    assert kube.workdir is not None and kube.server is not None
    node = RealNode(kube.server, kube.workdir / "pki", real_node_tools, progress=_progress)
    try:
        node.start()
    except RealNodeError as e:
        pytest.fail(f"real node failed to start: {e}", pytrace=False)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def kube_api(kube):
    """A kubernetes.client.ApiClient authenticated as cluster admin."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(kube.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def kube_namespace(kube_api) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture(scope="session")
def helm(testenv_tools) -> Path:
    """Path of the helm binary built from helm.sh/helm/v3."""
    return testenv_tools["helm"]


@pytest.fixture(scope="session")
def rclone(testenv_tools) -> Path:
    """Path of the rclone binary built from github.com/rclone/rclone (the export Job's
    program, at the version of the Job's image)."""
    return testenv_tools["rclone"]


@pytest.fixture(scope="session")
def terraform_bin(testenv_tools) -> Path:
    """Path of terraform (from PATH) or OpenTofu (built) — both speak the same CLI."""
    return testenv_tools["terraform"]


def _serving(server, what: str):
    """Start an emulator for the session (a failure fails the tests that need it, with
    its message); stop it at the end."""
    try:
        server.start()
    except (EmulatorError, ToolBuildError) as e:
        pytest.fail(f"{what} failed to start: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto server (IAM, STS, S3, ...) with auth enforced; ``.access_key_id`` etc. are an
    admin's."""
    yield from _serving(MotoServer(), "moto server")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite blob service; ``.connection_string`` uses the documented dev account."""
    yield from _serving(Azurite(), "Azurite")


@pytest.fixture(scope="session")
def node_moto(real_node) -> Iterator[MotoServer]:
    """moto server (auth enforced) listening on the real node's host-side address
    (``real_node.host_ip``): reachable from the node's pods and from the host, from no other
    machine."""
    yield from _serving(MotoServer(host=real_node.host_ip), f"moto server on {real_node.host_ip}")


@pytest.fixture(scope="session")
def node_azurite(real_node) -> Iterator[Azurite]:
    """Azurite's blob service on the real node's host-side address (see ``node_moto``)."""
    yield from _serving(Azurite(host=real_node.host_ip), f"Azurite on {real_node.host_ip}")


@pytest.fixture(scope="session")
def node_rclone_image(real_node, rclone) -> images.ImageArchive:
    """The export Job's image (``docker.io/rclone/rclone:<version>``: busybox and the rclone
    the tools built), built if missing and imported into the real node's containerd."""
    try:
        archive = images.build_rclone_image(rclone)
        real_node.import_image(archive)
    except (images.ImageBuildError, RealNodeError) as e:
        pytest.fail(f"the rclone image: {e}", pytrace=False)
    return archive
