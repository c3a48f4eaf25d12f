"""``./dev testenv build | up | down | status``: the test environment for people and benchmarks.

``up`` starts a detached control plane (it outlives this command) and records its PIDs in
``${HUBFLEET_CACHE_DIR:-~/.cache/hubfleet}/testenv/controlplane.json``, then a real node
(kubelet, containerd, kube-proxy; see node.py) recorded in ``node.json`` beside it;
``down`` stops those PIDs (SIGTERM, then SIGKILL), tears the node's namespaces and cgroups
down and removes the temp dirs with their keys.
"""

from __future__ import annotations

from pathlib import Path

import typer

# The tools are imported by each command: `hubfleet --help` and `validate` stay fast.

app = typer.Typer(
    help="Local Kubernetes control plane, helm and terraform for tests "
    "(built from the Go module proxy).",
    no_args_is_help=True,
)


@app.command("build")
def build_cmd() -> None:
    """Build or reuse all tools (Kubernetes, etcd, kwok, helm, terraform/OpenTofu, the real
    node, its images (rclone's included) and the hub images, Azurite)."""
    from . import build_all

    raise typer.Exit(build_all.main([]))


@app.command()
def up(
    timeout: float = typer.Option(120.0, help="Seconds to wait for the control plane to be ready."),
    real_node: bool = typer.Option(
        True, help="Also start a real node (kubelet, containerd, kube-proxy) beside kwok's."
    ),
) -> None:
    """Start a control plane (and a real node) in the background; print the KUBECONFIG line."""
    from . import build, images
    from .controlplane import (
        ControlPlane,
        ControlPlaneError,
        default_state_file,
        status_from_state,
        stop_from_state,
    )
    from .node import (
        RealNode,
        RealNodeError,
        default_node_state_file,
        ensure_node_tools,
        node_status_from_state,
        stop_node_from_state,
    )

    state = status_from_state()
    node_state = node_status_from_state()
    progress = lambda m: typer.echo(m, err=True)  # noqa: E731
    cp_ok = state is not None and all(c["alive"] for c in state["components"])
    node_ok = node_state is not None and all(c["alive"] for c in node_state["components"])
    if node_state is not None and not (cp_ok and node_ok):
        typer.echo("a previous real node is partly dead; removing it first", err=True)
        stop_node_from_state()
    if state is not None and not cp_ok:
        typer.echo("a previous control plane is partly dead; stopping it first", err=True)
        stop_from_state()
    if cp_ok and (node_ok or not real_node):
        assert state is not None
        typer.echo(f"already running at {state['server']}")
        typer.echo(f"export KUBECONFIG={state['kubeconfig']}")
        return
    try:
        tools = None if cp_ok else build.ensure_tools(progress=progress)
        node_tools = ensure_node_tools(progress) if real_node else None
    except (build.ToolBuildError, images.ImageBuildError) as e:
        typer.echo(f"ERROR: {e}", err=True)
        raise typer.Exit(1) from None
    if cp_ok:  # a control plane without a node (`up --no-real-node` earlier): add one
        assert state is not None
        server, pki, kubeconfig = (
            state["server"],
            Path(state["workdir"]) / "pki",
            state["kubeconfig"],
        )
    else:
        cp = ControlPlane(
            tools,
            state_file=default_state_file(),
            detached=True,
            start_timeout=timeout,
            progress=progress,
        )
        try:
            cp.start()
        except ControlPlaneError as e:
            typer.echo(f"ERROR: {e}", err=True)
            raise typer.Exit(1) from None
        assert cp.workdir is not None and cp.server is not None
        server, pki, kubeconfig = cp.server, cp.workdir / "pki", str(cp.kubeconfig)
    if node_tools is not None:
        node = RealNode(
            server,
            pki,
            node_tools,
            state_file=default_node_state_file(),
            detached=True,
            start_timeout=timeout,
            progress=progress,
        )
        try:
            node.start()
        except RealNodeError as e:
            typer.echo(f"ERROR: {e}", err=True)
            if not cp_ok:
                stop_from_state()
            raise typer.Exit(1) from None
    typer.echo(f"export KUBECONFIG={kubeconfig}")


@app.command()
def down(timeout: float = typer.Option(10.0, help="Seconds between SIGTERM and SIGKILL.")) -> None:
    """Stop the real node and control plane started by `up` (by PID); delete their temp dirs."""
    from .controlplane import status_from_state, stop_from_state
    from .node import node_status_from_state, stop_node_from_state

    if node_status_from_state() is not None:
        stopped_node = stop_node_from_state(timeout=timeout)
        typer.echo(f"real node stopped: {', '.join(stopped_node) or '(nothing was running)'}")
    if status_from_state() is None:
        typer.echo("no control plane recorded; nothing to stop")
        return
    stopped = stop_from_state(timeout=timeout)
    typer.echo(f"stopped: {', '.join(stopped) if stopped else '(nothing was running)'}")


@app.command()
def status() -> None:
    """Show endpoint, kubeconfig and whether each recorded PID is alive (exit 1 if not all are)."""
    from .controlplane import default_state_file, status_from_state
    from .node import node_status_from_state

    state = status_from_state()
    if state is None:
        typer.echo(f"not running (no state file at {default_state_file()})")
        raise typer.Exit(1)
    typer.echo(f"server:     {state['server']}")
    typer.echo(f"kubeconfig: {state['kubeconfig']}")
    typer.echo(f"workdir:    {state['workdir']}")
    comps = list(state["components"])
    node = node_status_from_state()
    if node is not None:
        typer.echo(f"real node:  {node['name']} ({node['node_ip']})")
        comps += node["components"]
    for c in comps:
        typer.echo(f"  {c['name']:24} pid {c['pid']:>7}  {'alive' if c['alive'] else 'DEAD'}")
    if not all(c["alive"] for c in comps):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
