"""customize_hub: community self-service, within what the hub's use-case preset allows.

Runbook:
  1. check the request against the preset (image allow-list, profiles it offers); a refusal
     names the field, the bad value and what is allowed, and nothing is changed
  2. compute the change to the hub's own values file (its last listed file) as a patch
  3. dry run: show the patch, stop
  4. under the hub lock (taken before the values file is touched): write the file and run
     the normal `deploy_hub` (schema check, health gate, rollback); if the deploy fails,
     the file is put back as it was
  5. commit the change on the branch the fleet is deployed from (the registry checkout's
     current branch), so the next fleet deploy keeps it; a concurrent edit of the file
     (uncommitted changes in it, or the branch moved while this ran) is refused, never
     overwritten. A registry that is not a git checkout keeps the file as written, and
     the patch is in the run's artifact.

Why a commit on the deployed branch, not a merge request: a community admin's change is
within what the preset allows (checked in step 1) and passed the same health gate as any
deploy; a merge request would leave the hub running values the registry does not have
until someone merges, and the next fleet deploy would revert it.
"""

from __future__ import annotations

import difflib
import io
import os
import subprocess
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact
from ruamel.yaml import YAML

from flows.deploy_hub import Gate, deploy_hub
from flows.operation import HubOperation, begin_hub
from flows.parameters import Names
from hubfleet.errors import HubfleetError
from hubfleet.presets import Preset, load_preset
from hubfleet.results import HubCustomized
from hubfleet.values import hub_layers
from tasks.locks import ensure_concurrency_limits_once, hub_lock


class CustomizationRejected(HubfleetError):
    """The request asks for something the hub's preset does not allow; nothing changed."""


def name_problems(field: str, names: list[str] | None) -> list[str]:
    """Why user or group names would be unsafe in a hub's config (empty: all fine).

    JupyterHub puts user names in URLs (/user/<name>/) and shows them in its admin page:
    a name must be printable, without spaces, slashes or invisible characters (control and
    format characters such as U+202E, which reverses how the text around it is shown).
    """
    problems = []
    for name in names or []:
        shown = repr(name[:40] + ("…" if len(name) > 40 else ""))
        bad = sorted(
            {f"U+{ord(c):04X}" for c in name if unicodedata.category(c)[0] in "CZ" or c == "/"}
        )
        if not name or len(name) > 100 or bad:
            why = f"contains {', '.join(bad[:5])}" if bad else "must be 1 to 100 characters"
            problems.append(
                f"{field}: {shown} {why}; use a plain name (letters, digits, . _ @ + -) "
                "as the hub's login shows it"
            )
    return problems


def check_request(
    preset: Preset | None,
    target: str,
    default_image: str | None,
    profiles: list[str] | None,
    default_profile: str | None,
) -> list[str]:
    """Every reason the request is refused (empty: allowed)."""
    if preset is None:
        if default_image or profiles or default_profile:
            return [
                f"{target} has no use_case, so no image allow-list or profiles to choose from; "
                "ask an operator to set use_case (learning, research or event) first"
            ]
        return []
    problems = []
    if default_image is not None and default_image not in preset.images:
        problems.append(
            f"default_image {default_image!r} is not allowed for a {preset.use_case.value} hub; "
            f"allowed images: {', '.join(preset.images)}"
        )
    unknown = [p for p in profiles or [] if p not in preset.profiles]
    if unknown:
        problems.append(
            f"profiles {unknown} are not offered by the {preset.use_case.value} preset; "
            f"choose from: {', '.join(preset.profiles)}"
        )
    if default_profile is not None and default_profile not in (profiles or preset.profiles):
        problems.append(
            f"default_profile {default_profile!r} must be one of the chosen profiles "
            f"({', '.join(profiles or preset.profiles)})"
        )
    return problems


def customized_values(
    current: Any,
    preset: Preset | None,
    admins: list[str] | None,
    allowed_users: list[str] | None,
    allowed_groups: list[str] | None,
    default_image: str | None,
    profiles: list[str] | None,
    default_profile: str | None,
) -> Any:
    """The hub's values file content with the community's choices applied (in place)."""
    values = current if current is not None else {}
    z2jh = values.setdefault("jupyterhub", {})  # z2jh values, as in every hub values file
    config = z2jh.setdefault("hub", {}).setdefault("config", {})
    auth = config.setdefault("Authenticator", {})
    if admins is not None:
        auth["admin_users"] = sorted(admins)
    if allowed_users is not None:
        auth["allowed_users"] = sorted(allowed_users)
    if allowed_groups is not None:
        config.setdefault("OAuthenticator", {})["allowed_groups"] = sorted(allowed_groups)
    if not auth:
        del config["Authenticator"]
    if default_image is not None:
        name, _, tag = default_image.rpartition(":")
        z2jh.setdefault("singleuser", {})["image"] = {"name": name, "tag": tag}
    if preset is not None and (profiles is not None or default_profile is not None):
        chosen = profiles or list(preset.profiles)
        default = default_profile or chosen[0]
        config.setdefault("KubeSpawner", {})["profile_list"] = [
            preset.profiles[slug].as_kubespawner(default=slug == default) for slug in chosen
        ]
    if not config:
        del z2jh["hub"]["config"]
    if not z2jh["hub"]:
        del z2jh["hub"]
    if not z2jh:
        del values["jupyterhub"]
    return values


def _dump(data: Any) -> str:
    yaml = YAML()
    yaml.preserve_quotes = True
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"git {args[0]} failed")
    return done.stdout.strip()


class ConcurrentEdit(HubfleetError):
    """The hub's values file changed under this run; nothing was committed."""


def registry_head(root: Path) -> tuple[str, str] | None:
    """(branch, commit) the registry checkout is on, or None when it is not a git checkout
    with a branch (then the working tree is the registry)."""
    try:
        branch = _git(root, "symbolic-ref", "--short", "HEAD")
        return branch, _git(root, "rev-parse", "HEAD")
    except OSError:
        return None


def refuse_uncommitted(root: Path, file: Path, target: str) -> None:
    """A values file with uncommitted edits is someone's work in progress: refuse."""
    if _git(root, "status", "--porcelain", "--", str(file)):
        raise ConcurrentEdit(
            f"{target}: {file.name} has uncommitted changes in the registry checkout "
            f"({file}); commit or discard them, then ask again. Nothing was changed."
        )


def commit_on_branch(
    root: Path, file: Path, content: str, branch: str, expected: str, message: str
) -> str:
    """Commit `content` as `file` on `branch`, whose tip must still be `expected` (a
    compare-and-swap: another writer's commit in between is refused, not overwritten).
    Built with a private index, then the checkout's index is refreshed for that file.
    Returns the commit id."""
    top = Path(_git(root, "rev-parse", "--show-toplevel"))
    rel = file.resolve().relative_to(top.resolve())
    with tempfile.TemporaryDirectory(prefix="hubfleet-customize-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(top, "read-tree", expected, env=env)
        blob_src = Path(tmp) / "values.yaml"
        blob_src.write_text(content, encoding="utf-8")
        blob = _git(top, "hash-object", "-w", str(blob_src))
        _git(top, "update-index", "--cacheinfo", f"100644,{blob},{rel}", env=env)
        tree = _git(top, "write-tree", env=env)
        author = {
            "GIT_AUTHOR_NAME": "hubfleet customize_hub",
            "GIT_AUTHOR_EMAIL": "hubfleet@localhost",
            "GIT_COMMITTER_NAME": "hubfleet customize_hub",
            "GIT_COMMITTER_EMAIL": "hubfleet@localhost",
        }
        commit = _git(top, "commit-tree", tree, "-p", expected, "-m", message, env=author)
        try:
            _git(top, "update-ref", f"refs/heads/{branch}", commit, expected)
        except OSError:
            raise ConcurrentEdit(
                f"branch {branch} moved while customize_hub ran (another commit landed); "
                "the change was deployed but not committed: ask again to record it on top"
            ) from None
    _git(top, "update-index", "--", str(rel))  # the checkout's index matches the new tip
    return commit


@flow(name="customize_hub", flow_run_name="customize_hub {cluster}/{hub}")
async def customize_hub(
    cluster: str,
    hub: str,
    admins: Names = None,
    allowed_users: Names = None,
    allowed_groups: Names = None,
    default_image: str | None = None,
    profiles: list[str] | None = None,
    default_profile: str | None = None,
    dry_run: bool = False,
    operator: str | None = None,
    gate: Gate = "auto",
) -> HubCustomized:
    """Change what a hub's community may change: admins, allowed users or groups, the
    default image (from the preset's allow-list) and the profiles offered (from the
    preset's). Leave a field empty to keep it as it is.

    gate: the deploy's health gate (see deploy_hub); `rollout` where hubs are not reachable.
    """
    op = await begin_hub("customize_hub", cluster, hub, operator)
    preset = load_preset(op.hub.use_case) if op.hub.use_case else None
    problems = check_request(preset, op.target, default_image, profiles, default_profile)
    problems += name_problems("admins", admins) + name_problems("allowed_users", allowed_users)
    problems += name_problems("allowed_groups", allowed_groups)
    if problems:
        raise CustomizationRejected(
            f"{op.target}: request refused, nothing was changed:\n  " + "\n  ".join(problems)
        )
    file = _values_file(op)
    # Broken values files are reported as `file:line` before anything is changed.
    hub_layers(op.fleet, op.cluster.name, op.hub)
    request = (admins, allowed_users, allowed_groups, default_image, profiles, default_profile)
    if dry_run:  # reads only: no lock, so a dry run never waits behind a deploy
        return await _apply(op, file, preset, request, dry_run=True, gate=gate)
    await ensure_concurrency_limits_once(op.fleet)
    # The lock first: the file is read, changed and committed by one run at a time (the
    # deploy below runs under it too: locks pass down to subflows).
    async with hub_lock(cluster, hub):
        return await _apply(op, file, preset, request, dry_run=False, gate=gate)


async def _apply(
    op: HubOperation,
    file: Path,
    preset: Preset | None,
    request: tuple[Any, ...],
    dry_run: bool,
    gate: Gate,
) -> HubCustomized:
    """Steps 2-5 for one request: `request` is customized_values's arguments after the
    preset (admins, allowed users and groups, default image, profiles, default profile)."""
    cluster, hub = op.cluster.name, op.hub.name
    head = registry_head(op.fleet.root)
    if head is not None and not dry_run:
        refuse_uncommitted(op.fleet.root, file, op.target)
    before = file.read_text(encoding="utf-8")
    yaml = YAML()
    yaml.preserve_quotes = True
    after = _dump(customized_values(yaml.load(before), preset, *request))
    rel = file.relative_to(op.fleet.root)
    patch = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            f"a/{rel}",
            f"b/{rel}",
        )
    )
    if not patch:
        await _record(op, "No change", "", None)
        return HubCustomized(hub=op.target, changed=False, dry_run=dry_run)
    if dry_run:
        await _record(op, "Dry run: would apply", patch, None, dry_run=True)
        return HubCustomized(hub=op.target, changed=False, dry_run=True, patch=patch)

    file.write_text(after, encoding="utf-8")
    try:
        deployed = await deploy_hub(cluster, hub, operator=op.operator, gate=gate)
    except BaseException:
        file.write_text(before, encoding="utf-8")  # rolled back: the registry as it was
        raise
    branch: str | None = None
    commit: str | None = None
    if head is not None:
        branch, expected = head
        message = f"customize_hub {op.target} by {op.operator}\n\n{patch}"
        commit = commit_on_branch(op.fleet.root, file, after, branch, expected, message)
    await _record(op, "Applied", patch, branch)
    return HubCustomized(
        hub=op.target, changed=True, patch=patch, branch=branch, commit=commit, deploy=deployed
    )


def _values_file(op: HubOperation) -> Path:
    if not op.hub.values:
        raise CustomizationRejected(
            f"{op.target} lists no values file of its own; add one (e.g. "
            f"values: [{op.hub.name}.values.yaml]) so customizations have a home. "
            "Nothing was changed."
        )
    return op.fleet.cluster_dir(op.cluster.name) / op.hub.values[-1]


async def _record(
    op: HubOperation, what: str, patch: str, branch: str | None, dry_run: bool = False
) -> None:
    where = (
        "Nothing was written. Run without dry_run to deploy it and commit it on the branch "
        "the fleet is deployed from."
        if dry_run
        else f"Committed on `{branch}`, the branch the fleet is deployed from: the next fleet "
        "deploy keeps it."
        if branch
        else "The registry is not a git checkout: the values file keeps the change; "
        "apply this patch wherever the registry is kept."
    )
    await acreate_markdown_artifact(
        key=f"customize-{op.cluster.name}-{op.hub.name}",
        markdown=f"# {what}: customize {op.target}\n\n"
        + (f"{where}\n\n```diff\n{patch}```\n\n" if patch else "")
        + f"operator: {op.operator}, fleet revision: {op.revision}\n",
        description=f"customize {op.target}: {what.lower()}",
    )
