"""The price table of `hubfleet usage`: what a node of each machine type costs per hour, and
storage per GiB-month, per provider.

hubfleet ships documented defaults (`hubfleet/prices.yaml`: on-demand list prices of the
machine types the example fleet uses, in USD); `prices:` in fleet.yaml overrides them,
entry by entry:

    prices:
      currency: EUR                 # the whole table's currency (default: the shipped one)
      gcp:
        storage_gib_month: 0.10     # replaces the shipped value
        machines:                   # added to (or replacing) the shipped machine types
          n2-highmem-4: {hourly: 0.262, cpu: 4, memory_gib: 32}
      kubeconfig:
        default_machine: m5.xlarge  # for clusters whose cluster.yaml names no user pool
        machines:
          m5.xlarge: {hourly: 0.192, cpu: 4, memory_gib: 16}

The override is validated with the fleet (`hubfleet validate`: file, line, field, fix); the
merged table is checked when it is used (a `default_machine` that has no price).
This module imports nothing of hubfleet.model (which imports it).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML

from hubfleet.errors import HubfleetError

DEFAULTS_FILE = Path(__file__).resolve().parent / "prices.yaml"
PROVIDERS: tuple[str, ...] = ("gcp", "aws", "azure", "kubeconfig", "local")
#: Hours in a month as cloud price sheets count them (storage is priced per GiB-month).
HOURS_PER_MONTH = 730.0


class _Strict(BaseModel):
    # Same rules as hubfleet.model.Strict (kept separate: model.py imports this module).
    model_config = ConfigDict(extra="forbid", frozen=True)


class MachinePrice(_Strict):
    """One node of a machine type: its price and size."""

    hourly: float = Field(ge=0, description="Price of one node per hour (on-demand).")
    cpu: float = Field(gt=0, description="vCPUs of one node.")
    memory_gib: float = Field(gt=0, description="Memory of one node in GiB.")


class ProviderPrices(_Strict):
    """One provider's machine types and storage price."""

    machines: dict[str, MachinePrice] = Field(
        default_factory=dict, description="Price and size per machine type."
    )
    storage_gib_month: float | None = Field(
        None, ge=0, description="Price of a GiB of persistent disk per month."
    )
    default_machine: str | None = Field(
        None,
        description="Machine type of user servers on a cluster whose cluster.yaml names no "
        "user pool (kubeconfig, local, or terraform without user_pools).",
    )


class PriceTable(_Strict):
    """`prices:` in fleet.yaml (every key optional), and the shipped table."""

    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD.")
    gcp: ProviderPrices | None = None
    aws: ProviderPrices | None = None
    azure: ProviderPrices | None = None
    kubeconfig: ProviderPrices | None = None
    local: ProviderPrices | None = None

    def provider(self, name: str) -> ProviderPrices:
        return getattr(self, name, None) or ProviderPrices()


class PricesInvalid(HubfleetError):
    """The merged price table is inconsistent, or the shipped one is malformed."""


@cache
def shipped_prices() -> PriceTable:
    """The defaults in `hubfleet/prices.yaml` (a malformed file is a hubfleet bug)."""
    data = YAML(typ="safe").load(DEFAULTS_FILE.read_text(encoding="utf-8")) or {}
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        raise PricesInvalid(f"{DEFAULTS_FILE}: malformed price table:\n{exc}") from None


def merge_prices(base: PriceTable, override: PriceTable | None) -> PriceTable:
    """`override` on top of `base`: machine types added or replaced one by one, the storage
    price and default machine replaced where the override sets them; then checked."""
    if override is None:
        merged = base
    else:
        providers: dict[str, ProviderPrices] = {}
        for name in PROVIDERS:
            mine, theirs = base.provider(name), getattr(override, name)
            if theirs is None:
                providers[name] = mine
                continue
            given = theirs.model_fields_set
            providers[name] = ProviderPrices(
                machines={**mine.machines, **theirs.machines},
                storage_gib_month=(
                    theirs.storage_gib_month
                    if "storage_gib_month" in given
                    else mine.storage_gib_month
                ),
                default_machine=(
                    theirs.default_machine if "default_machine" in given else mine.default_machine
                ),
            )
        currency = override.currency if "currency" in override.model_fields_set else base.currency
        merged = PriceTable(currency=currency, **providers)
    check_prices(merged)
    return merged


def check_prices(table: PriceTable) -> None:
    """Every provider's `default_machine` has a price."""
    for name in PROVIDERS:
        prices = table.provider(name)
        if prices.default_machine and prices.default_machine not in prices.machines:
            known = ", ".join(sorted(prices.machines)) or "none"
            raise PricesInvalid(
                f"fleet.yaml: prices.{name}.default_machine: {prices.default_machine!r} has no "
                f"price (machine types priced for {name}: {known}); add it under "
                f"prices.{name}.machines, e.g. {prices.default_machine}: "
                "{hourly: 0.19, cpu: 4, memory_gib: 16}, or name one of those"
            )


def machine_of(
    table: PriceTable, provider: str, pools: dict[str, str]
) -> tuple[str | None, Literal["user pool", "default", "none"]]:
    """The machine type user servers run on: the cluster's first user pool (cluster.yaml
    `terraform.<module>.user_pools`), else the provider's `default_machine`."""
    if pools:
        return next(iter(pools.values())), "user pool"
    default = table.provider(provider).default_machine
    return (default, "default") if default else (None, "none")
