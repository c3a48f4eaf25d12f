"""upgrade_fleet: the nightly run that moves every hub to its chart version.

Same plan and safety as deploy_fleet (support, staging, gate, waves, rollback), but hubs
already on their target chart version are left alone.
"""

from __future__ import annotations

from prefect import flow

from flows.deploy_fleet import run_fleet_plan
from flows.deploy_hub import Gate
from flows.parameters import HelmWait, Selection, WavePercent, WaveSize
from hubfleet.results import FleetRun


@flow(name="upgrade_fleet", flow_run_name="upgrade_fleet")
async def upgrade_fleet(
    selection: Selection = None,
    dry_run: bool = False,
    operator: str | None = None,
    wave_size: WaveSize = None,
    wave_percent: WavePercent = None,
    remove_orphans: bool = False,
    gate: Gate = "auto",
    wait_timeout: HelmWait = "5m",
) -> FleetRun:
    """Upgrade every selected hub (default: all) whose deployed chart version differs from
    the fleet's."""
    return await run_fleet_plan(
        "upgrade_fleet",
        selection or ["*"],
        dry_run,
        operator,
        True,
        wave_size,
        wave_percent,
        remove_orphans,
        gate,
        wait_timeout,
    )
