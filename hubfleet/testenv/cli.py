"""``hubfleet testenv build | up | down | status``: the test environment for people and benchmarks.

``up`` starts a detached control plane (it outlives this command) and records its PIDs in
``${HUBFLEET_CACHE_DIR:-~/.cache/hubfleet}/testenv/controlplane.json``; ``down`` stops
those PIDs (SIGTERM, then SIGKILL) and removes the temp dir with its keys.
"""

from __future__ import annotations

import typer

from . import build
from .controlplane import (
    ControlPlane,
    ControlPlaneError,
    default_state_file,
    status_from_state,
    stop_from_state,
)

app = typer.Typer(
    help="Local Kubernetes control plane, helm and terraform for tests "
    "(built from the Go module proxy).",
    no_args_is_help=True,
)


@app.command("build")
def build_cmd() -> None:
    """Build or reuse all tools (Kubernetes, etcd, kwok, helm, terraform/OpenTofu, Azurite)."""
    raise typer.Exit(build.main([]))


@app.command()
def up(
    timeout: float = typer.Option(120.0, help="Seconds to wait for the control plane to be ready."),
) -> None:
    """Start a control plane in the background and print the KUBECONFIG export line."""
    state = status_from_state()
    if state is not None:
        if all(c["alive"] for c in state["components"]):
            typer.echo(f"already running at {state['server']}")
            typer.echo(f"export KUBECONFIG={state['kubeconfig']}")
            return
        typer.echo("a previous control plane is partly dead; stopping it first", err=True)
        stop_from_state()
    try:
        tools = build.ensure_tools(progress=lambda m: typer.echo(m, err=True))
    except build.ToolBuildError as e:
        typer.echo(f"ERROR: {e}", err=True)
        raise typer.Exit(1) from None
    cp = ControlPlane(
        tools,
        state_file=default_state_file(),
        detached=True,
        start_timeout=timeout,
        progress=lambda m: typer.echo(m, err=True),
    )
    try:
        cp.start()
    except ControlPlaneError as e:
        typer.echo(f"ERROR: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"export KUBECONFIG={cp.kubeconfig}")


@app.command()
def down(timeout: float = typer.Option(10.0, help="Seconds between SIGTERM and SIGKILL.")) -> None:
    """Stop the control plane started by `up` (by PID) and delete its temp dir."""
    if status_from_state() is None:
        typer.echo("no control plane recorded; nothing to stop")
        return
    stopped = stop_from_state(timeout=timeout)
    typer.echo(f"stopped: {', '.join(stopped) if stopped else '(nothing was running)'}")


@app.command()
def status() -> None:
    """Show endpoint, kubeconfig and whether each recorded PID is alive (exit 1 if not all are)."""
    state = status_from_state()
    if state is None:
        typer.echo(f"not running (no state file at {default_state_file()})")
        raise typer.Exit(1)
    typer.echo(f"server:     {state['server']}")
    typer.echo(f"kubeconfig: {state['kubeconfig']}")
    typer.echo(f"workdir:    {state['workdir']}")
    for c in state["components"]:
        typer.echo(f"  {c['name']:24} pid {c['pid']:>7}  {'alive' if c['alive'] else 'DEAD'}")
    if not all(c["alive"] for c in state["components"]):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
