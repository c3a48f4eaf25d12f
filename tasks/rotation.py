"""The one rotation protocol every credential kind follows.

    create new -> store new -> verify new -> switch consumers   (one Prefect transaction)
    -> revoke old -> verify old is refused                      (after the commit)

Every step inside the transaction has a rollback hook: if any of them fails, the new
credential is deleted, the store and the consumers get the old credential back, and the
old one is checked to still work. Until the old credential is revoked it keeps working,
so there is never a moment without a working credential; the store holds exactly one
credential at any time, so there are never two "current" ones.

A kind plugs in by subclassing `Rotator` (tasks/hub_credentials.py, hub_secrets.py), or
`DeployerKeyRotator` for a cluster's deployer credential (aws_iam.py, gcp_iam.py,
azure_ad.py, kube_credentials.py). Secret values live only in `Issued.secret` (a SecretStr)
in this process's memory: never in parameters, results, logs or exceptions.
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, NoReturn, Self, TypeVar

from prefect import get_run_logger, task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, atransaction, get_transaction
from pydantic import SecretStr

from blocks.deployer_credential import DeployerCredential
from hubfleet.credentials import (
    CredentialKind,
)
from hubfleet.errors import HubfleetError
from hubfleet.results import Rotated
from tasks.retry import transient_retries


class CredentialRefused(HubfleetError):
    """The real API refused a credential (the message names which, never its value)."""


class StillAccepted(HubfleetError):
    """A revoked credential is still accepted by the API."""


class RotationFailed(HubfleetError):
    """A rotation failed; the message says at which step and what was rolled back."""

    def __init__(self, message: str, rolled_back: list[str]):
        super().__init__(message)
        self.rolled_back = rolled_back


@dataclass(frozen=True)
class Issued:
    """One credential: its public identity and (in memory only) its secret."""

    ident: str  # what the API calls it: service name, access key id, key name, ...
    secret: SecretStr = field(repr=False)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Rotator(ABC):
    """One credential's adapter to the protocol. Subclasses talk to exactly one system."""

    kind: CredentialKind
    #: How long `verify_refused` waits for a revocation to be enforced (caches, replicas).
    revoke_grace_seconds: float = 20.0
    #: Where `store` keeps the current credential, as the run's messages name it.
    store_name: str = "block"

    def __init__(self, cluster: str, hub: str | None = None):
        self.cluster = cluster
        self.hub = hub

    @property
    def owner(self) -> str:
        return f"{self.cluster}/{self.hub}" if self.hub else self.cluster

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.owner.replace('/', '-')}"

    @abstractmethod
    async def current(self) -> Issued:
        """The credential stored now (raises a HubfleetError if none is stored)."""

    async def clean_stale(self, current: Issued) -> list[str]:
        """Remove leftovers of an interrupted rotation that block a new one; what was done."""
        return []

    @abstractmethod
    async def create(self) -> Issued:
        """Issue a new credential in the real system (the old one stays valid)."""

    @abstractmethod
    async def delete(self, new: Issued) -> None:
        """Undo `create`: delete the new credential."""

    @abstractmethod
    async def store(self, new: Issued, previous: Issued) -> None:
        """Replace the stored credential with `new` (the block holds one credential)."""

    @abstractmethod
    async def restore(self, previous: Issued) -> None:
        """Undo `store`: put the previous credential back, exactly as it was."""

    @abstractmethod
    async def verify(self, credential: Issued) -> str:
        """Prove the credential works against the real API; returns who it authenticates as.
        Raises CredentialRefused (or TransientError, retried) otherwise."""

    async def switch(self, new: Issued) -> list[str]:
        """Point consumers other than the store (e.g. a Kubernetes Secret) at `new`."""
        return []

    async def unswitch(self, previous: Issued) -> None:
        """Undo `switch` (nothing to undo by default: no consumers outside the block)."""
        return None

    @abstractmethod
    async def revoke(self, old: Issued) -> None:
        """Revoke the old credential in the real system."""

    @abstractmethod
    async def refused(self, old: Issued) -> bool:
        """Ask the real API whether it now refuses `old` (True) or still accepts it."""


StoredT = TypeVar("StoredT", bound=Block)


class DeployerKeyRotator(Rotator, Generic[StoredT]):
    """A cluster's deployer credential: its `DeployerCredential` record (no secret) names the
    block of `stored_type` that holds the secret. `store` writes both (the secret through
    `stored_with`), `restore` puts both back as they were loaded."""

    stored_type: ClassVar[type[Block]]

    def __init__(self, record: DeployerCredential, stored: StoredT):
        super().__init__(record.cluster)
        self.record = record
        self.stored = stored

    @classmethod
    async def load_stored(cls, name: str) -> Block:
        """The secret block named by the record."""
        return await cls.stored_type.aload(name)

    @classmethod
    async def for_cluster(cls, cluster: str) -> Self:
        record = await DeployerCredential.for_cluster(cluster)
        stored = await cls.load_stored(record.secret_block)
        if not isinstance(stored, cls.stored_type):
            raise HubfleetError(
                f"{cluster}: block {record.secret_block!r} is a {type(stored).__name__}, not "
                f"a {cls.stored_type.__name__}; fix the deployer credential's secret_block"
            )
        return cls(record, stored)  # type: ignore[arg-type]

    @abstractmethod
    def stored_with(self, new: Issued) -> Block:
        """The secret block as it is with `new` in it (the rest as stored)."""

    async def store(self, new: Issued, previous: Issued) -> None:
        await self.stored_with(new).asave(self.record.secret_block, overwrite=True)
        updated = self.record.model_copy(
            update={
                "credential_id": new.ident,
                "created_at": new.created_at,
                "last_rotated": datetime.now(UTC),
            }
        )
        await updated.asave(DeployerCredential.block_name(self.cluster), overwrite=True)

    async def restore(self, previous: Issued) -> None:
        await self.stored.asave(self.record.secret_block, overwrite=True)
        await self.record.asave(DeployerCredential.block_name(self.cluster), overwrite=True)


@dataclass
class Rotation:
    """One rotation in progress: what rollback hooks need, and what they did."""

    rotator: Rotator
    old: Issued
    new: Issued | None = None
    stored: bool = False
    switched: bool = False
    rolled_back: list[str] = field(default_factory=list)


#: Rotations in progress in this process, by id. Transactions deep-copy what they hold,
#: so they carry only the id; the objects (clients, secrets) stay here.
_ACTIVE: dict[str, Rotation] = {}


def _rotation(txn: Transaction | Any) -> Rotation:
    return _ACTIVE[txn.get("rotation_id")]


def _current_rotation() -> Rotation:
    txn = get_transaction()
    assert txn is not None, "rotation tasks run inside rotate()'s transaction"
    return _rotation(txn)


# --- the steps ----------------------------------------------------------------------------


@task(task_run_name="create-{label}", cache_policy=NO_CACHE)
async def create_credential(label: str) -> str:
    """Changes: issues a new credential in the real system. Returns its public id."""
    rotation = _current_rotation()
    rotation.new = await rotation.rotator.create()
    get_run_logger().info("created %s %s", rotation.rotator.kind, rotation.new.ident)
    return rotation.new.ident


@create_credential.on_rollback  # type: ignore[arg-type]  # async hooks are awaited
async def _delete_new(txn: Transaction) -> None:
    rotation = _rotation(txn)
    if rotation.new is not None:
        await _undo(
            rotation,
            f"deleted the new credential {rotation.new.ident}",
            rotation.rotator.delete(rotation.new),
        )


@task(task_run_name="store-{label}", cache_policy=NO_CACHE)
async def store_credential(label: str) -> None:
    """Changes: the credential's block now holds the new credential (and only it)."""
    rotation = _current_rotation()
    assert rotation.new is not None
    await rotation.rotator.store(rotation.new, rotation.old)
    rotation.stored = True
    get_run_logger().info("stored %s in its %s", rotation.new.ident, rotation.rotator.store_name)


@store_credential.on_rollback  # type: ignore[arg-type]  # async hooks are awaited
async def _restore_old(txn: Transaction) -> None:
    rotation = _rotation(txn)
    if rotation.stored:
        await _undo(
            rotation,
            f"restored {rotation.old.ident} in the {rotation.rotator.store_name}",
            rotation.rotator.restore(rotation.old),
        )


@task(
    task_run_name="verify-new-{label}",
    cache_policy=NO_CACHE,
    **transient_retries(retries=4, backoff=0.5),
)
async def verify_new_credential(label: str) -> str:
    """Read-only: the new credential authenticates against the real API."""
    rotation = _current_rotation()
    assert rotation.new is not None
    who = await rotation.rotator.verify(rotation.new)
    get_run_logger().info("new credential %s works (authenticates as %s)", rotation.new.ident, who)
    return who


@task(task_run_name="switch-{label}", cache_policy=NO_CACHE)
async def switch_consumers(label: str) -> list[str]:
    """Changes: consumers outside the block (e.g. a Kubernetes Secret) get the new one."""
    rotation = _current_rotation()
    assert rotation.new is not None
    switched = await rotation.rotator.switch(rotation.new)
    rotation.switched = True
    for consumer in switched:
        get_run_logger().info("switched %s to %s", consumer, rotation.new.ident)
    return switched


@switch_consumers.on_rollback  # type: ignore[arg-type]  # async hooks are awaited
async def _switch_back(txn: Transaction) -> None:
    rotation = _rotation(txn)
    if rotation.switched:
        await _undo(
            rotation,
            f"switched consumers back to {rotation.old.ident}",
            rotation.rotator.unswitch(rotation.old),
        )


@task(task_run_name="revoke-old-{label}", cache_policy=NO_CACHE, **transient_retries(3, 0.5))
async def revoke_old_credential(label: str, rotation_id: str) -> str:
    """Changes: revokes the old credential in the real system."""
    rotation = _ACTIVE[rotation_id]
    await rotation.rotator.revoke(rotation.old)
    get_run_logger().info("revoked %s", rotation.old.ident)
    return rotation.old.ident


@task(task_run_name="verify-old-refused-{label}", cache_policy=NO_CACHE)
async def verify_old_refused(label: str, rotation_id: str) -> None:
    """Read-only: the real API refuses the old credential (waits for it to take effect)."""
    rotation = _ACTIVE[rotation_id]
    deadline = asyncio.get_running_loop().time() + rotation.rotator.revoke_grace_seconds
    while not await rotation.rotator.refused(rotation.old):
        if asyncio.get_running_loop().time() > deadline:
            raise StillAccepted(
                f"{rotation.rotator.kind} {rotation.old.ident} of {rotation.rotator.owner} is "
                f"still accepted {rotation.rotator.revoke_grace_seconds:g}s after revocation; "
                "revoke it by hand and find out why"
            )
        await asyncio.sleep(0.5)
    get_run_logger().info("old credential %s is refused", rotation.old.ident)


async def _undo(rotation: Rotation, what: str, call: Any) -> None:
    """Run one rollback step; record it, or record its failure and go on with the others.

    Prefect stops at the first hook that raises, so a hook never raises."""
    logger = get_run_logger()
    try:
        await call
    except Exception as exc:
        rotation.rolled_back.append(f"FAILED to undo ({what}): {type(exc).__name__}: {exc}")
        logger.error("rollback step failed: %s: %s", what, exc)
    else:
        rotation.rolled_back.append(what)
        logger.warning("rolled back: %s", what)


# --- the protocol ---------------------------------------------------------------------------


async def rotate(rotator: Rotator) -> Rotated:
    """Rotate one credential by the protocol; on failure before revocation, roll back.

    Raises RotationFailed naming the failed step and listing what was rolled back (and
    whether the old credential was checked to still work).
    """
    logger = get_run_logger()
    old = await rotator.current()
    cleaned = await rotator.clean_stale(old)
    rotation_id = uuid.uuid4().hex
    rotation = Rotation(rotator, old)
    _ACTIVE[rotation_id] = rotation
    label = rotator.label
    try:
        try:
            async with atransaction() as txn:
                txn.set("rotation_id", rotation_id)
                await create_credential(label)
                await store_credential(label)
                who = await verify_new_credential(label)
                switched = await switch_consumers(label)
        except Exception as exc:
            await _after_rollback(rotation, exc)
        # Committed: the new credential is stored, verified and in use. Only now revoke.
        await revoke_old_credential(label, rotation_id)
        await verify_old_refused(label, rotation_id)
        assert rotation.new is not None
        logger.info(
            "rotated %s of %s: %s -> %s", rotator.kind, rotator.owner, old.ident, rotation.new.ident
        )
        return Rotated(
            kind=rotator.kind.value,
            owner=rotator.owner,
            old=old.ident,
            new=rotation.new.ident,
            verified_as=who,
            switched=switched,
            cleaned=cleaned,
        )
    finally:
        del _ACTIVE[rotation_id]


async def _after_rollback(rotation: Rotation, exc: Exception) -> NoReturn:
    """The transaction rolled back: prove the old credential still works, then raise."""
    rotator = rotation.rotator
    try:
        await rotator.verify(rotation.old)
        rotation.rolled_back.append(f"checked: the old credential {rotation.old.ident} works")
    except Exception as check:
        rotation.rolled_back.append(
            f"WARNING: the old credential {rotation.old.ident} does not work after rollback "
            f"({type(check).__name__}: {check})"
        )
    undone = "; ".join(rotation.rolled_back) or "nothing to roll back"
    message = (
        f"rotation of {rotator.kind} for {rotator.owner} failed ({type(exc).__name__}: {exc}); "
        f"rolled back: {undone}"
    )
    get_run_logger().error("%s", message)
    raise RotationFailed(message, list(rotation.rolled_back)) from None
