"""The usage arithmetic (hours, peak, cost), the price table's override and its errors, and
the CLI's refusals. Pure functions and the real CLI in a subprocess; no hub needed here
(tests/pilot/test_usage_local.py has real users on real hubs)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fleetfiles import copy_example_fleet

from hubfleet.loader import FleetInvalid, load_fleet
from hubfleet.prices import MachinePrice, PricesInvalid, merge_prices, shipped_prices
from hubfleet.usage import (
    HubCosting,
    Resources,
    Sample,
    ServerSeen,
    Storage,
    UsageInputError,
    build_usage,
    gib,
    peak_users,
    render,
    resources_from_values,
    server_hourly,
    server_runs,
)
from tasks.usage import hub_costing, price_table, sample_rows, samples_from_rows

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def seen(user: str, started: float, server: str = "", profile: str | None = None) -> ServerSeen:
    return ServerSeen(user, server, at(started), profile)


NODE = MachinePrice(hourly=0.40, cpu=4, memory_gib=16)


def test_server_share_is_the_larger_of_cpu_and_memory() -> None:
    # 1 CPU of 4 (25%) beats 2 GiB of 16 (12.5%): a quarter of the node's price.
    assert server_hourly(Resources(1, 2, ""), NODE) == pytest.approx(0.10)
    # 8 GiB of 16 (50%) beats 0.5 CPU of 4: half of it.
    assert server_hourly(Resources(0.5, 8, ""), NODE) == pytest.approx(0.20)


def test_hours_peak_users_and_cost_from_samples() -> None:
    """Sweeps every 15 min. alice: started at 0, seen at 15, 30, 45 -> 45 min. bob:
    started at 20 (between sweeps), seen at 30 and 45, gone at 60 -> 25 min. carol: two
    sessions (started 5, seen at 15; started 50, seen at 60) -> 10 + 10 min; a missed
    sample (a failed sweep) in between changes nothing, since `started` identifies it."""
    hub = "c/h"
    samples = [
        Sample(hub, at(15), (seen("alice", 0), seen("carol", 5))),
        Sample(hub, at(30), (seen("alice", 0), seen("bob", 20))),
        Sample(hub, at(45), (seen("alice", 0), seen("bob", 20))),
        Sample(hub, at(60), (seen("carol", 50),)),
        Sample("c/other", at(60), (seen("dave", 0),)),  # another hub, not reported
    ]
    costing = {hub: HubCosting("n", NODE, 0.10, Resources(1, 2, "cpu guarantee"))}
    usage = build_usage(
        samples,
        start=T0,
        end=at(60),
        hubs={hub: "learning"},
        costing=costing,
        storage={hub: Storage(10.0, 4.0, "3 PVC(s)")},
    )
    row = usage.hubs[hub]
    hours = (45 + 25 + 10 + 10) / 60
    assert row["server_hours"] == pytest.approx(hours, abs=1e-4)
    assert row["active_users"] == 3
    # alice + carol from 5 to 15, alice + bob from 20 to 45, bob's end meets nobody: 2,
    # first at 5 (carol's start, between two sweeps); never 3.
    assert row["peak_users"] == 2
    assert row["peak_at"] == at(5).isoformat(timespec="seconds")
    assert row["compute_cost"] == pytest.approx(round(hours * 0.10, 2))
    # storage: 10 GiB requested x 0.10 per GiB-month x 1 h of a 730 h month
    assert row["storage_cost"] == pytest.approx(round(10 * 0.10 / 730, 2))
    assert row["storage_gib"] == 10.0 and row["storage_used_gib"] == 4.0
    assert usage.use_cases["learning"]["server_hours"] == pytest.approx(hours, abs=1e-4)
    assert usage.total["peak_users"] == 2 and usage.total["active_users"] == 3


def test_window_clips_and_a_users_servers_count_once() -> None:
    runs = server_runs(
        [
            Sample("c/h", at(30), (seen("ann", -60), seen("ann", 10, "gpu"))),
            Sample("c/h", at(90), (seen("ann", -60), seen("ann", 10, "gpu"))),
        ],
        start=T0,
        end=at(60),
    )
    # Both servers clipped to [0, 60] and [10, 60]: 50 + 60 minutes, one user at a time.
    assert sum(r.hours for r in runs) == pytest.approx(110 / 60)
    assert peak_users(runs)[0] == 1


def test_a_server_seen_once_at_its_start_counts_nothing_and_peaks_are_per_instant() -> None:
    runs = server_runs(
        [Sample("c/h", at(10), (seen("a", 10),)), Sample("c/h", at(20), (seen("b", 20),))],
        start=T0,
        end=at(60),
    )
    assert runs == []
    # Back to back (one ends as the other starts) is not concurrent.
    runs = server_runs(
        [Sample("c/h", at(10), (seen("a", 0),)), Sample("c/h", at(20), (seen("b", 10),))],
        start=T0,
        end=at(60),
    )
    assert peak_users(runs)[0] == 1


def test_requests_from_values_guarantee_limit_default_and_profiles() -> None:
    values = {
        "jupyterhub": {
            "singleuser": {
                "cpu": {"limit": 2},
                "memory": {"guarantee": "512M", "limit": "2G"},
                "profileList": [
                    {"display_name": "Small", "slug": "small", "default": True},
                    {
                        "display_name": "Big Memory",
                        "kubespawner_override": {"mem_guarantee": "8Gi", "cpu_guarantee": "500m"},
                    },
                ],
            }
        }
    }
    costing = resources_from_values(values, "c/h")
    assert costing.default == Resources(2.0, 0.5, "cpu limit, memory guarantee")
    assert costing.resources("big-memory") == Resources(0.5, 8.0, "cpu guarantee, memory guarantee")
    assert not resources_from_values(values, "c/h", profiles=False).profiles
    assert costing.resources(None) == costing.resources("small") == costing.default
    # The preset's (and customize_hub's) place wins over singleuser.profileList.
    values["jupyterhub"]["hub"] = {
        "config": {
            "KubeSpawner": {
                "profile_list": [{"slug": "large", "kubespawner_override": {"mem_guarantee": "1G"}}]
            }
        }
    }
    costing = resources_from_values(values, "c/h")
    assert set(costing.profiles) == {"large"}
    # only mem_guarantee overridden: the hub's cpu limit stays
    assert costing.resources("large") == Resources(2.0, 1.0, "cpu limit, memory guarantee")
    # nothing set: z2jh's default memory guarantee, no CPU
    assert resources_from_values({}, "c/h").default.memory_gib == 1.0
    with pytest.raises(UsageInputError, match=r"c/h: values jupyterhub.singleuser.memory.limit: "):
        resources_from_values({"jupyterhub": {"singleuser": {"memory": {"limit": "lots"}}}}, "c/h")
    assert gib("1073741824", "x") == 1.0 and gib("1.5Gi", "x") == 1.5


def test_profile_costs_its_own_rate() -> None:
    costing = HubCosting("n", NODE, None, Resources(1, 2, ""), {"big": Resources(0.5, 8, "")})
    usage = build_usage(
        [Sample("c/h", at(60), (seen("a", 0, profile="big"), seen("b", 0)))],
        start=T0,
        end=at(60),
        hubs={"c/h": "research"},
        costing={"c/h": costing},
    )
    assert usage.hubs["c/h"]["compute_cost"] == pytest.approx(0.20 + 0.10)


def write_fleet(tmp_path: Path, prices: str) -> Path:
    root = copy_example_fleet(tmp_path)
    fleet_yaml = root / "fleet.yaml"
    fleet_yaml.write_text(fleet_yaml.read_text() + prices)
    return root


def test_fleet_yaml_overrides_the_shipped_prices(tmp_path: Path) -> None:
    root = write_fleet(
        tmp_path,
        "prices:\n"
        "  currency: EUR\n"
        "  gcp:\n"
        "    storage_gib_month: 0.2\n"
        "    machines:\n"
        "      n2-highmem-4: {hourly: 1.0, cpu: 4, memory_gib: 32}\n"
        "  kubeconfig:\n"
        "    default_machine: big\n"
        "    machines:\n"
        "      big: {hourly: 2.0, cpu: 8, memory_gib: 64}\n",
    )
    fleet = load_fleet(root)
    table = price_table(fleet)
    assert table.currency == "EUR"
    assert table.provider("gcp").machines["n2-highmem-4"].hourly == 1.0
    # untouched entries stay as shipped
    assert (
        table.provider("gcp").machines["n2-standard-2"]
        == shipped_prices().gcp.machines[  # type: ignore[union-attr]
            "n2-standard-2"
        ]
    )
    assert table.provider("aws") == shipped_prices().aws
    costing, note = hub_costing(fleet, table, "gcp-central", "college")
    # college: memory guarantee 1G on an n2-highmem-4 (32 GiB for 1.0/h)
    assert note == "" and costing.machine == "n2-highmem-4"
    assert costing.hourly(None) == pytest.approx(1.0 / 32)
    assert costing.storage_gib_month == 0.2
    byo, note = hub_costing(fleet, table, "byo-kube", "course")
    assert byo.machine == "big" and note == ""


def test_without_a_price_the_cost_is_left_out_and_says_what_to_add(tmp_path: Path) -> None:
    fleet = load_fleet(REPO / "fleet")
    costing, note = hub_costing(fleet, price_table(fleet), "byo-kube", "course")
    assert costing.price is None
    assert "prices.kubeconfig.default_machine" in note and "fleet.yaml" in note
    usage = build_usage(
        [Sample("byo-kube/course", at(60), (seen("a", 0),))],
        start=T0,
        end=at(60),
        hubs={"byo-kube/course": "none"},
        costing={"byo-kube/course": costing},
        notes=[note],
    )
    assert usage.hubs["byo-kube/course"]["server_hours"] == 1.0
    assert usage.hubs["byo-kube/course"]["cost"] is None
    assert usage.total["priced_hubs"] == 0

    root = write_fleet(
        tmp_path,
        "prices:\n  gcp:\n    machines:\n      n2-standard-2: {hourly: 1, cpu: 2, memory_gib: 8}\n",
    )
    (root / "clusters" / "gcp-central" / "cluster.yaml").write_text(
        (root / "clusters" / "gcp-central" / "cluster.yaml")
        .read_text()
        .replace("n2-highmem-4", "a2-ultragpu-8g")
    )
    fleet = load_fleet(root)
    _, note = hub_costing(fleet, price_table(fleet), "gcp-central", "college")
    assert "'a2-ultragpu-8g' has no price" in note and "prices: {gcp: {machines:" in note


@pytest.mark.parametrize(
    ("prices", "line", "field", "message"),
    [
        (
            "prices:\n  gcp:\n    machines:\n"
            "      n2-highmem-4: {hourly: -1, cpu: 4, memory_gib: 32}\n",
            4,
            "prices.gcp.machines.n2-highmem-4.hourly",
            "found -1; input should be greater than or equal to 0",
        ),
        (
            "prices:\n  gcp:\n    machines:\n"
            "      n2-highmem-4: {hourly: 1, cores: 4, memory_gib: 32}\n",
            4,
            "prices.gcp.machines.n2-highmem-4.cores",
            "unknown key 'cores'; allowed keys: hourly, cpu, memory_gib",
        ),
        (
            "prices:\n  currency: dollars\n",
            2,
            "prices.currency",
            "'dollars' must match ^[A-Z]{3}$",
        ),
        (
            "prices:\n  digitalocean: {}\n",
            2,
            "prices.digitalocean",
            "unknown key 'digitalocean'; allowed keys: currency, gcp, aws, azure, "
            "kubeconfig, local",
        ),
    ],
)
def test_a_bad_override_names_file_line_field_and_fix(
    tmp_path: Path, prices: str, line: int, field: str, message: str
) -> None:
    root = write_fleet(tmp_path, prices)
    base = len((REPO / "fleet" / "fleet.yaml").read_text().splitlines())
    with pytest.raises(FleetInvalid) as info:
        load_fleet(root)
    [problem] = [p for p in info.value.problems if p.field == field]
    assert problem.file == root / "fleet.yaml"
    assert problem.line == base + line
    assert problem.field == field
    assert problem.message == message


def test_a_default_machine_without_a_price_is_refused() -> None:
    from hubfleet.prices import PriceTable, ProviderPrices

    override = PriceTable(kubeconfig=ProviderPrices(default_machine="m5.xlarge"))
    with pytest.raises(PricesInvalid) as info:
        merge_prices(shipped_prices(), override)
    assert str(info.value) == (
        "fleet.yaml: prices.kubeconfig.default_machine: 'm5.xlarge' has no price (machine "
        "types priced for kubeconfig: none); add it under prices.kubeconfig.machines, e.g. "
        "m5.xlarge: {hourly: 0.19, cpu: 4, memory_gib: 16}, or name one of those"
    )


def test_samples_round_trip_through_the_artifact_rows() -> None:
    results = [
        {
            "hub": "c/h",
            "sampled_at": at(15).isoformat(),
            "servers": [
                {
                    "user": "a",
                    "server": "",
                    "started": "2026-11-02T09:00:00.123456Z",  # as JupyterHub writes it
                    "profile": "",
                },
                {"user": "a", "server": "gpu", "started": at(5).isoformat(), "profile": "big"},
            ],
        },
        {"hub": "c/idle", "sampled_at": at(15).isoformat(), "servers": []},
        {"hub": "c/down", "verdict": "down"},  # not reached: no sample at all
    ]
    samples = sorted(samples_from_rows(sample_rows(results)), key=lambda s: s.hub)
    assert [s.hub for s in samples] == ["c/h", "c/idle"]
    assert samples[1].servers == ()
    assert samples[0].servers == (
        ServerSeen("a", "", datetime(2026, 11, 2, 9, 0, 0, 123456, tzinfo=UTC), None),
        ServerSeen("a", "gpu", at(5), "big"),
    )


def test_render_json_and_csv_and_refuse_other_formats() -> None:
    usage = build_usage(
        [Sample("c/h", at(60), (seen("a", 0),))],
        start=T0,
        end=at(60),
        hubs={"c/h": "learning"},
        costing={"c/h": HubCosting("n", NODE, 0.1, Resources(1, 2, ""))},
    )
    csv_text = render(usage, "csv").splitlines()
    assert csv_text[0].startswith("scope,name,use_case,active_users,server_hours,peak_users")
    assert csv_text[1].startswith("hub,c/h,learning,1,1.0,1,,n,0.1,0.1,,0.1,USD")
    assert '"server_hours": 1.0' in render(usage, "json")
    with pytest.raises(UsageInputError, match="allowed: table, json, csv"):
        render(usage, "xml")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hubfleet.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_cli_refuses_a_bad_format_and_a_bad_price_table_plainly(tmp_path: Path) -> None:
    bad = run_cli("usage", "--format", "xml")
    assert bad.returncode == 2
    assert "error: --format 'xml': allowed: table, json, csv" in bad.stderr
    assert "Traceback" not in bad.stderr
    root = write_fleet(tmp_path, "prices:\n  aws:\n    storage_gib_month: cheap\n")
    invalid = run_cli("usage", "--fleet", str(root))
    assert invalid.returncode == 2 and "Traceback" not in invalid.stderr
    assert "fleet.yaml:" in invalid.stderr and "prices.aws.storage_gib_month" in invalid.stderr
    assert "nothing was run" in invalid.stderr


def test_the_ops_report_carries_the_usage_section_and_its_chart() -> None:
    from hubfleet.report import build_report
    from hubfleet.report import render as render_report

    report = build_report([], [], start=T0, end=at(60))
    report.usage = build_usage(
        [Sample("c/h", at(60), (seen("a", 0),))],
        start=T0,
        end=at(60),
        hubs={"c/h": "learning", "c/free": "event"},
        costing={"c/h": HubCosting("n", NODE, 0.1, Resources(1, 2, ""))},
        notes=["c/free: cost not estimated: add a price"],
    )
    md = render_report(report, "md")
    assert "## Usage and cost" in md
    assert "| c/h | learning | 1 | 1.00 | 1 | - | n | 0.1000 USD | 0.10 USD | - | 0.10 USD |" in md
    assert "Note: c/free: cost not estimated: add a price" in md
    page = render_report(report, "html")
    assert "<h2>Usage and cost</h2>" in page and "aria-label='estimated cost per hub'" in page
    assert "<title>c/h: compute 0.10 USD</title>" in page
    data = json.loads(render_report(report, "json"))
    assert data["usage"]["hubs"]["c/h"]["server_hours"] == 1.0
