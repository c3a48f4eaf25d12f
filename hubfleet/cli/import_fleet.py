"""`hubfleet import` (a 2i2c-style z2jh config repository as a hubfleet fleet) and
`hubfleet secret-values load` (a hub's secret values into its block, from stdin).

`import` reads YAML only (no Prefect); `secret-values load` imports Prefect when it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

secret_app = typer.Typer(
    help="A hub's secret values (the Prefect Secret block hub-values-<cluster>-<hub>).",
    no_args_is_help=True,
)


def import_fleet(
    source: Annotated[
        Path, typer.Argument(help="Config repository (its root, config/ or config/clusters/).")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Where to write the fleet (a new directory).")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be written; write nothing.")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Fleet name (default: the output directory's name)."),
    ] = None,
    chart_version: Annotated[
        str | None,
        typer.Option(help="Zero to JupyterHub chart version in fleet.yaml (default 4.4.0)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="A provider field the source lacks: CLUSTER.SECTION.FIELD=VALUE, e.g. "
            "utoronto.azure.subscription_id=<uuid> (repeat).",
        ),
    ] = None,
    tier: Annotated[
        list[str] | None,
        typer.Option(help="A hub's tier instead of the rule: CLUSTER/HUB=staging|prod (repeat)."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Write into an existing non-empty directory."),
    ] = False,
) -> None:
    """Convert a config repository laid out like 2i2c-org/infrastructure
    (config/clusters/<cluster>/cluster.yaml, basehub/daskhub hubs) into a hubfleet fleet.
    Lists every tier decided by rule, every secret layer with the command that loads it,
    and every key not carried over as file:line: key: why. Nothing is written if the
    source is unreadable or malformed."""
    from hubfleet.importer import (
        DEFAULT_CHART_VERSION,
        TIER_RULE,
        ImportFailed,
        import_config,
        parse_settings,
        parse_tiers,
        write_fleet,
    )

    result = import_config(
        source,
        name or out_dir.resolve().name,
        chart_version or DEFAULT_CHART_VERSION,
        parse_settings(set_ or []),
        parse_tiers(tier or []),
    )
    if result.problems:
        raise ImportFailed(result.problems)
    if dry_run:
        say(f"dry run: nothing was written; would write {len(result.files)} file(s):")
        for rel, item in result.files.items():
            say(f"  {out_dir / rel}  ({item.origin})")
        for rel, item in result.files.items():
            if rel.name in ("fleet.yaml", "cluster.yaml"):
                say(f"\n--- {out_dir / rel}\n{item.text}", end="")
        say("")
    else:
        write_fleet(result, out_dir, overwrite)
        say(
            f"wrote {out_dir}: {len(result.clusters)} cluster(s), {result.hubs} hub(s), "
            f"{len(result.files)} file(s)"
        )
    say(f"\ntier rule: {TIER_RULE}.")
    by_rule = [t for t in result.tiers if t.by_rule]
    say(
        f"tiers to review ({len(by_rule)} decided by the rule; set one with "
        "--tier CLUSTER/HUB=staging|prod, or edit cluster.yaml):"
    )
    for decision in result.tiers:
        say(f"  {decision}")
    say(
        f"\nsecret layers ({len(result.secrets)}; never decrypted or copied by the import; "
        "each command decrypts with sops and loads the values into the hub's block, applied "
        "after every values file):"
    )
    for layer in result.secrets:
        say(f"  {layer}")
    say(f"\nnot carried over ({len(result.dropped)}):")
    for problem in result.dropped:
        say(f"  {problem}")
    say(
        "\nnext: store each cluster's access (a ClusterAccess block named after it), load the "
        f"secret layers, then `hubfleet validate {out_dir}`."
    )


def load(
    cluster: str,
    hub: str,
    source_format: Annotated[
        str,
        typer.Option(
            "--from",
            help="hubfleet (values as they are), basehub (keep its jupyterhub: block) or "
            "daskhub (basehub.jupyterhub, un-nested to jupyterhub:).",
        ),
    ] = "hubfleet",
    merge: Annotated[
        bool, typer.Option("--merge", help="Merge into the block's values (default: replace).")
    ] = False,
    fleet: Annotated[Path | None, typer.Option("--fleet", help="Fleet directory.")] = None,
) -> None:
    """Read a hub's secret values (YAML or JSON) from stdin, e.g. from `sops --decrypt`, and
    store them in its Secret block hub-values-<cluster>-<hub>. Values are never printed:
    only the names of the keys stored and of those left out."""
    from hubfleet.cli.common import err, use_fleet
    from hubfleet.errors import HubfleetError
    from hubfleet.layers import leaves, merge_values
    from hubfleet.loader import load_fleet
    from hubfleet.paths import fleet_dir
    from hubfleet.values import secret_values_block

    if source_format not in ("hubfleet", "basehub", "daskhub"):
        raise HubfleetError(f"--from {source_format!r}: use hubfleet, basehub or daskhub")
    use_fleet(fleet)
    load_fleet(fleet_dir()).cluster(cluster).hub(hub)  # a clear error before anything else
    values = _read_stdin()
    values, left_out = _convert_secret(values, source_format)
    if left_out:
        err.print(
            f"left out (not hubfleet hub values): {', '.join(left_out)}",
            markup=False,
            soft_wrap=True,
        )
    import asyncio

    from prefect.blocks.system import Secret

    from hubfleet.server import connect

    block = secret_values_block(cluster, hub)
    connect(start=False)

    async def store() -> dict[str, Any]:
        current: dict[str, Any] = {}
        if merge:
            from tasks.cluster_session import load_secret_values

            current = await load_secret_values(cluster, hub)
        stored = merge_values(current, values)
        await Secret(value=stored).save(block, overwrite=True)
        return stored

    stored = asyncio.run(store())
    keys = ", ".join(".".join(p) for p in leaves(stored)) or "none"
    say(f"stored block {block} ({'merged' if merge else 'replaced'}): keys {keys}")


def say(text: str = "", end: str = "\n") -> None:
    """Print plain text (paths and values may hold '[': no markup) unwrapped."""
    from hubfleet.cli.common import out

    out.print(text, markup=False, soft_wrap=True, end=end)


def _read_stdin() -> dict[str, Any]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    from hubfleet.errors import HubfleetError

    try:
        data = YAML(typ="safe").load(sys.stdin.read())
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise HubfleetError(
            f"stdin is not YAML or JSON{line}; nothing was stored (is sops --decrypt working?)"
        ) from None
    if not isinstance(data, dict):
        raise HubfleetError("stdin must hold a mapping of chart values; nothing was stored")
    data.pop("sops", None)  # metadata of a file that was not decrypted
    return data


def _convert_secret(values: dict[str, Any], source_format: str) -> tuple[dict[str, Any], list[str]]:
    from hubfleet.importer import CHART_KEYS

    left_out: list[str] = []
    if source_format == "daskhub":
        left_out = [k for k in values if k != "basehub"]
        base = values.get("basehub") or {}
        left_out += [f"basehub.{k}" for k in base if k != "jupyterhub"]
        values = {"jupyterhub": base["jupyterhub"]} if "jupyterhub" in base else {}
    elif source_format == "basehub":
        left_out = [k for k in values if k not in CHART_KEYS]
        values = {k: v for k, v in values.items() if k in CHART_KEYS}
    return values, left_out


def register(app: typer.Typer) -> None:
    """Add `hubfleet import` and `hubfleet secret-values` to the CLI."""
    app.command("import")(import_fleet)
    secret_app.command("load")(load)
    app.add_typer(secret_app, name="secret-values")
