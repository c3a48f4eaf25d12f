"""What the pilot needs: `hubfleet show` (effective values and their origin),
`hubfleet export-hub` (a bundle a community runs without hubfleet) and `hubfleet report`
(the fleet ops report from the run history).

Prefect is imported only where the run history or a secret block is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hubfleet.errors import HubfleetError
from hubfleet.loader import load_fleet
from hubfleet.model import Fleet, Hub, Provider
from hubfleet.paths import fleet_dir

FleetOpt = Annotated[
    Path | None,
    typer.Option("--fleet", help="Fleet directory (default: $HUBFLEET_FLEET or ./fleet)."),
]


class UnknownHub(HubfleetError):
    """A hub argument names no hub of the fleet (or several)."""


def find_hub(fleet: Fleet, name: str) -> tuple[str, Hub]:
    """'cluster/hub', or a hub name that is unique in the fleet."""
    if "/" in name:
        cluster, _, hub = name.partition("/")
        try:
            return cluster, fleet.cluster(cluster).hub(hub)
        except LookupError as exc:
            raise UnknownHub(str(exc)) from None
    found = [(c.name, h) for c in fleet.clusters for h in c.hubs if h.name == name]
    if len(found) == 1:
        return found[0]
    every = ", ".join(f"{c.name}/{h.name}" for c in fleet.clusters for h in c.hubs)
    if not found:
        raise UnknownHub(f"no hub {name!r} in the fleet; hubs: {every}")
    where = ", ".join(f"{c}/{h.name}" for c, h in found)
    raise UnknownHub(f"hub {name!r} is in several clusters ({where}); give it as CLUSTER/HUB")


def show(
    hub: Annotated[str, typer.Argument(help="CLUSTER/HUB, or a hub name unique in the fleet.")],
    fleet: FleetOpt = None,
    only: Annotated[
        str | None,
        typer.Option(help="Only keys starting with this prefix, e.g. singleuser or cull."),
    ] = None,
    chart_defaults: Annotated[
        bool,
        typer.Option("--chart-defaults", help="Also list values nobody changed from the chart."),
    ] = False,
) -> None:
    """Show a hub's effective values and where each comes from (chart, preset, fleet,
    cluster, hub). The merged values are checked against the chart's schema too."""
    from hubfleet.cli.common import out
    from hubfleet.presets import explain, load_preset
    from hubfleet.values import hub_layers, hub_schema, validate_layers

    model = load_fleet(fleet or fleet_dir())
    cluster, spec = find_hub(model, hub)
    layers = hub_layers(model, cluster, spec)
    validate_layers(layers, hub_schema(model, spec))
    preset = load_preset(spec.use_case) if spec.use_case else None
    out.print(
        f"hub {cluster}/{spec.name}: use case "
        + (f"{preset.use_case.value} ({preset.description})" if preset else "none (no preset)")
    )
    sources = [layer.source.replace(f"{model.root}/", "") for layer in layers]
    out.print("layers, later wins: " + " → ".join(sources))
    table = Table(title=f"effective values of {cluster}/{spec.name}")
    table.add_column("key", no_wrap=True)
    for column in ("value", "from", "source", "overrides"):
        table.add_column(column, overflow="fold")
    for origin in explain(layers):
        if only and not origin.key.startswith(only):
            continue
        if origin.kind == "chart" and not chart_defaults:
            continue
        table.add_row(
            origin.key,
            _short(origin.value),
            origin.kind,
            origin.source.replace(f"{model.root}/", ""),
            ", ".join(origin.overrode),
        )
    out.print(table)
    if spec.event is not None:
        out.print(_event_table(model, cluster, spec))
    elif preset and preset.event_defaults:
        out.print(
            f"preset {preset.use_case.value} fills in for kind: event hubs: "
            + ", ".join(f"event.{k}={v}" for k, v in preset.event_defaults.items())
        )
    if model.cluster(cluster).provider is Provider.local:
        from hubfleet.localhub import not_applied
        from hubfleet.values import local_values

        ignored = not_applied(local_values(model, cluster, spec))
        out.print(
            "local hub: applies hub.config, cull (idle-culler service) and singleuser "
            "memory/cpu (as Spawner limits, informational for local processes); chart "
            "defaults are not applied"
        )
        if ignored:
            out.print("not applied on local: " + ", ".join(ignored))
    out.print("Secret values (block hub-values-<cluster>-<hub>) are applied last and never shown.")


def _event_table(model: Fleet, cluster: str, spec: Hub) -> Table:
    """The hub's event settings and where each comes from: the hub's cluster.yaml, the
    use case's preset (keys it left out), or hubfleet's default."""
    from rich.markup import escape

    from hubfleet.presets import load_preset

    event = spec.event
    assert event is not None
    own = str(model.cluster_dir(cluster) / "cluster.yaml").replace(f"{model.root}/", "")
    preset = load_preset(spec.use_case).layer().source if spec.use_case else ""
    table = Table(title=f"event settings of {cluster}/{spec.name}")
    for column in ("key", "value", "from", "source"):
        table.add_column(column, overflow="fold")
    as_yaml = event.model_dump(mode="json")  # durations as ISO 8601, as in the YAML
    for name in type(event).model_fields:
        value = as_yaml[name]
        if name in event.from_preset:
            kind, source = "preset", preset
        elif name in event.model_fields_set:
            kind, source = "hub", own
        else:
            kind, source = "default", "hubfleet (hubfleet/model.py EventSpec)"
        if value is None and kind == "default":
            continue
        table.add_row(f"event.{name}", escape(_short(value)), kind, source)
    return table


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def export_hub(
    cluster: str,
    hub: str,
    directory: Annotated[Path, typer.Argument(help="Where to write the bundle (new or empty).")],
    fleet: FleetOpt = None,
) -> None:
    """Write a bundle that runs HUB on any Kubernetes with plain helm, without hubfleet:
    a reference to the chart, the merged values (secrets as placeholders), install.sh and
    a README."""
    from hubfleet.bundle import export_hub as write_bundle
    from hubfleet.cli.common import out

    model = load_fleet(fleet or fleet_dir())
    model.cluster(cluster).hub(hub)  # a clear LookupError before anything else
    bundle = write_bundle(model, cluster, hub, directory, secret_keys=_secret_keys(cluster, hub))
    out.print(
        f"wrote {bundle.directory}: "
        + ("hubfleet wrapper chart, " if bundle.wrapper else "")
        + f"Zero to JupyterHub {bundle.chart_version}, values.yaml, "
        f"secrets.example.yaml ({len(bundle.secret_keys)} secret(s) to fill in), install.sh, "
        "README.md"
    )
    out.print(f"next: read {bundle.directory / 'README.md'}")


def _secret_keys(cluster: str, hub: str) -> list[str]:
    """Names (never values) of the hub's secret values, if a Prefect server is configured."""
    if not os.environ.get("PREFECT_API_URL"):
        return []
    import asyncio

    from hubfleet.layers import leaves
    from tasks.cluster_session import load_secret_values

    values = asyncio.run(load_secret_values(cluster, hub))
    return [".".join(path) for path in leaves(values)]


def report(
    since: Annotated[str, typer.Option(help="How far back: e.g. 30d, 12h, 2w.")] = "30d",
    format: Annotated[str, typer.Option("--format", help="md, html or json.")] = "md",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    fleet: FleetOpt = None,
    usage: Annotated[
        bool,
        typer.Option(
            "--usage/--no-usage",
            help="Include usage and estimated cost per hub and use case (`hubfleet usage`).",
        ),
    ] = True,
) -> None:
    """The fleet ops report from the run history alone: availability and incidents per hub
    and use case, operations and outcomes, runs that needed a human, time to recovery; and
    what each hub used and cost (`hubfleet usage`)."""
    import asyncio

    from hubfleet.audit import parse_since
    from hubfleet.cli.common import api_url
    from hubfleet.report import FORMATS, ReportInputError, build_report, render

    if format not in FORMATS:
        raise ReportInputError(f"--format {format!r}: allowed: {', '.join(FORMATS)}")
    start = parse_since(since)
    assert start is not None
    root = fleet or fleet_dir()
    model = load_fleet(root) if (root / "fleet.yaml").is_file() else None
    api_url()
    from flows.fleet_report import collect_history

    sweeps, runs = asyncio.run(collect_history(start))
    built = build_report(sweeps, runs, start=start, use_cases=_use_cases(model))
    if model is not None and usage:
        from tasks.usage import collect_usage

        built.usage = asyncio.run(collect_usage(model, start))
    text = render(built, format)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        typer.echo(text)


def _use_cases(model: Fleet | None) -> dict[str, str]:
    if model is None:
        return {}
    return {
        f"{c.name}/{h.name}": (h.use_case.value if h.use_case else "none")
        for c in model.clusters
        for h in c.hubs
    }


def register(app: typer.Typer) -> None:
    """Add `show`, `export-hub` and `report` to the hubfleet CLI."""
    app.command()(show)
    app.command("export-hub")(export_hub)
    app.command()(report)
