"""`hubfleet oauth-client set CLUSTER HUB`: store a hub's OAuth client secret (stdin) in
its block `oauth-<cluster>-<hub>` (hubfleet/auth.py; the hub's next deploy uses it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

oauth_app = typer.Typer(
    help="A hub's OAuth client secret (the OAuth Client block oauth-<cluster>-<hub>).",
    no_args_is_help=True,
)


def set_secret(
    cluster: Annotated[str, typer.Argument(help="Cluster name.")],
    hub: Annotated[str, typer.Argument(help="Hub name (it must have an `auth:` section).")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the hub and the input; store nothing.")
    ] = False,
    fleet: Annotated[Path | None, typer.Option("--fleet", help="Fleet directory.")] = None,
) -> None:
    """Read the client secret of the hub's OAuth application from stdin (one line, e.g.
    pasted, or from a secret manager's CLI) and store it in the hub's block. Never printed.
    Replacing it (rotation by hand) records when; redeploy the hub to use it."""
    from hubfleet.auth import oauth_block
    from hubfleet.cli.common import out, use_fleet
    from hubfleet.errors import HubfleetError
    from hubfleet.loader import load_fleet
    from hubfleet.paths import fleet_dir

    use_fleet(fleet)
    spec = load_fleet(fleet_dir()).cluster(cluster).hub(hub)
    if spec.auth is None:
        raise HubfleetError(
            f"hub {cluster}/{hub} has no `auth:` in cluster.yaml; add it first (see README, "
            "Login (OAuth)). Nothing was stored."
        )
    if sys.stdin.isatty():
        out.print("paste the client secret, then Enter:", markup=False)
    secret = sys.stdin.readline().strip()
    if not secret:
        raise HubfleetError("stdin held no client secret (an empty line); nothing was stored")
    block = oauth_block(cluster, hub)
    if dry_run:
        out.print(f"dry run: would store the client secret of {spec.auth.client_id} in block "
                  f"{block}; nothing was stored", markup=False, soft_wrap=True)  # fmt: skip
        return
    import asyncio

    from pydantic import SecretStr

    from hubfleet.server import connect
    from tasks.oauth import store_oauth_client

    connect(start=False)
    done = asyncio.run(store_oauth_client(cluster, hub, spec.auth.client_id, SecretStr(secret)))
    out.print(
        f"{done} block {block} (client {spec.auth.client_id}); redeploy the hub to use it: "
        f"hubfleet deploy {cluster} {hub}",
        markup=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add `hubfleet oauth-client` to the CLI."""
    oauth_app.command("set")(set_secret)
    app.add_typer(oauth_app, name="oauth-client")
