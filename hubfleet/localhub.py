"""The `local` provider's plan: what a hub's JupyterHub config and processes look like.

Pure functions only; `tasks/local_hub.py` writes the files and runs the processes.

A local hub honours the parts of its values (fleet and cluster files, its use case's preset,
its own files) that mean something for local processes: `hub.config` (traitlets config),
`cull` (jupyterhub-idle-culler as a hub-managed service) and `singleuser.memory/cpu`
(Spawner limits; informational only for the local process spawner, which enforces none).
Kubernetes-only keys (storage, profile_list, scheduling, images, network policies, the Dask
Gateway, ...) are ignored, and `hubfleet show` lists them as not applied. The chart's own
defaults are not applied on local: e.g. culling runs only when a preset or file enables it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubfleet.health import HEALTH_USER
from hubfleet.layers import leaves

if TYPE_CHECKING:
    from hubfleet.localusers import UserAccount

#: The admin user that exists only to mint the first ops token; it can never log in
#: (local hubs use the null authenticator) and its tokens are revoked after bootstrap.
BOOTSTRAP_USER = "hubfleet-bootstrap"
#: The user whose tokens hubfleet operates the hub with (refused at login). Its role
#: grants only what the health levels and operations need: no admin, no user deletion.
OPS_USER = "hubfleet-ops"
OPS_SCOPES = [
    "list:users",  # which users exist (event expiry stops their servers)
    "list:services",  # which services run (the idle culler)
    "read:services",
    "read:users",  # a user's server state (the spawn probe waits for the health server)
    "servers",  # start and stop user servers (spawn probe, expiry, teardown)
    f"access:servers!user={HEALTH_USER}",  # run Python in the health user's kernel
    f"tokens!user={OPS_USER}",  # issue its successor and revoke itself (rotation)
]
#: Roles hubfleet adds to every hub's load_roles (creating the users at start).
HUBFLEET_ROLES = [
    {
        "name": "hubfleet-ops",
        "description": "hubfleet's operations: health checks, stopping servers, its own tokens",
        "scopes": OPS_SCOPES,
        "users": [OPS_USER],
    },
    {"name": "hubfleet-health", "scopes": ["self"], "users": [HEALTH_USER]},
]


#: The bootstrap user's scopes on a Kubernetes hub (local hubs make it admin): enough to
#: issue the first ops token with the ops role's scopes, and to revoke its own tokens.
BOOTSTRAP_SCOPES = ["admin:users", "tokens", "servers", "access:servers", "list:services",
                    "read:services"]  # fmt: skip
#: Refuses a login as any of hubfleet's own users, whatever the authenticator (blocking the
#: ops user would strip its role): they act only through the API.
REFUSE_HUBFLEET_USERS = (
    f"_HUBFLEET_USERS = {sorted({OPS_USER, HEALTH_USER, BOOTSTRAP_USER})!r}\n"
    "def _refuse_hubfleet_users(authenticator, handler, authentication):\n"
    "    if authentication and authentication.get('name') in _HUBFLEET_USERS:\n"
    "        return None\n"
    "    return authentication\n"
    "c.Authenticator.post_auth_hook = _refuse_hubfleet_users\n"
)


def kube_hub_values() -> dict[str, Any]:
    """hubfleet's users on a Kubernetes hub, as z2jh values: the same roles as a local
    hub's (`hub.loadRoles`, which also creates the users), a bootstrap role, and the login
    refusal (`hub.extraConfig`)."""
    roles = {
        role["name"]: {k: v for k, v in role.items() if k != "name"} for role in HUBFLEET_ROLES
    }
    roles["hubfleet-bootstrap"] = {
        "description": "mints hubfleet's first ops token; its tokens are revoked after",
        "scopes": BOOTSTRAP_SCOPES,
        "users": [BOOTSTRAP_USER],
    }
    return {
        "hub": {
            "loadRoles": roles,
            "extraConfig": {"hubfleet-refuse-logins": REFUSE_HUBFLEET_USERS},
        }
    }


@dataclass(frozen=True)
class Ports:
    public: int  # configurable-http-proxy: what users open
    proxy_api: int  # configurable-http-proxy's REST API, used by the hub
    hub: int  # the hub's own HTTP server, behind the proxy

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def render_config(
    *,
    hub: str,
    directory: Path,
    ports: Ports,
    hub_config: dict[str, Any],
    account: UserAccount | None,
) -> str:
    """jupyterhub_config.py for one local hub. It holds no secrets: those come by env.

    With `account` (hubfleet runs as root) user servers run as that unprivileged account
    (hubfleet/localspawner.py); without, as the invoking user with homes in `directory`."""
    config = {cls: dict(traits) for cls, traits in hub_config.items()}
    # hubfleet's bootstrap admin survives whatever admin_users the values set.
    auth = config.setdefault("Authenticator", {})
    auth["admin_users"] = sorted({*auth.get("admin_users", []), BOOTSTRAP_USER})
    # The health probe's user gets servers only through the API; it can never log in.
    auth["blocked_users"] = sorted({*auth.get("blocked_users", []), HEALTH_USER})
    jupyterhub = config.setdefault("JupyterHub", {})
    jupyterhub["load_roles"] = [*jupyterhub.get("load_roles", []), *HUBFLEET_ROLES]
    user_config = json.dumps(config, indent=2, sort_keys=True)
    lines = [
        f"# Written by hubfleet for local hub {hub!r}. Do not edit: redeploy instead.",
        "import json",
        "c = get_config()  # noqa: F821",
        f"c.JupyterHub.bind_url = 'http://127.0.0.1:{ports.public}'",
        "c.JupyterHub.hub_ip = '127.0.0.1'",
        f"c.JupyterHub.hub_port = {ports.hub}",
        # hubfleet runs the proxy itself so it can stop it by PID even if the hub dies.
        "c.ConfigurableHTTPProxy.should_start = False",
        f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{ports.proxy_api}'",
        f"c.JupyterHub.db_url = 'sqlite:///{directory / 'jupyterhub.sqlite'}'",
        f"c.JupyterHub.cookie_secret_file = '{directory / 'jupyterhub_cookie_secret'}'",
        "c.JupyterHub.authenticator_class = 'null'",
        *_spawner_lines(directory, account),
        "c.JupyterHub.cleanup_servers = True",
        # hubfleet's own users act only through the API (as on Kubernetes hubs).
        *REFUSE_HUBFLEET_USERS.splitlines(),
        "# The hub's values (jupyterhub.hub.config), applied as zero-to-jupyterhub does:",
        f"for _cls, _traits in json.loads({user_config!r}).items():",
        "    for _name, _value in _traits.items():",
        "        setattr(getattr(c, _cls), _name, _value)",
        *(
            # No values file turns user code back into root's: the spawner stays ours.
            ["c.JupyterHub.spawner_class = _AccountSpawner"] if account else []
        ),
        "",
    ]
    return "\n".join(lines)


def _spawner_lines(directory: Path, account: UserAccount | None) -> list[str]:
    if account is None:
        return [
            "c.JupyterHub.spawner_class = 'simple'",
            f"c.SimpleLocalProcessSpawner.home_dir_template = '{directory / 'homes'}/{{username}}'",
        ]
    code = str(account.code)
    return [
        # The hub imports the spawner from the hubfleet that started it.
        "import sys",
        f"if {code!r} not in sys.path:",
        f"    sys.path.insert(0, {code!r})",
        "from hubfleet.localspawner import AccountSpawner as _AccountSpawner",
        "c.JupyterHub.spawner_class = _AccountSpawner",
        f"c.AccountSpawner.account = {account.name!r}",
        f"c.AccountSpawner.homes = {str(account.homes)!r}",
        f"c.AccountSpawner.env_dir = {str(account.env)!r}",
        f"c.Spawner.cmd = {[str(account.env / 'bin' / 'jupyterhub-singleuser')]!r}",
    ]


#: Value paths a local hub applies; everything else is Kubernetes-only.
HONOURED = tuple(
    ("jupyterhub", *path)
    for path in (("hub", "config"), ("cull",), ("singleuser", "memory"), ("singleuser", "cpu"))
)
#: Traitlets classes of `hub.config` that only exist on Kubernetes (ignored on local).
KUBERNETES_ONLY_CLASSES = frozenset({"KubeSpawner"})
#: z2jh's culler defaults (its values.yaml), which a local hub's `cull` completes.
CULL_DEFAULTS = {"enabled": True, "users": False, "timeout": 3600, "every": 600, "maxAge": 0}
#: The idle culler's service name and scopes (as z2jh grants them).
CULLER = "idle-culler"
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
#: Runs jupyterhub_idle_culler, exiting when its hub goes: JupyterHub stops its managed
#: services on a clean shutdown, but a killed hub would leave an orphan culler behind.
CULLER_MAIN = (
    "import os, runpy, sys, threading, time\n"
    "hub = os.getppid()\n"
    "def watch():\n"
    "    while os.getppid() == hub:\n"
    "        time.sleep(1)\n"
    "    os._exit(0)\n"
    "threading.Thread(target=watch, daemon=True).start()\n"
    "sys.argv[0] = 'jupyterhub_idle_culler'\n"
    "runpy.run_module('jupyterhub_idle_culler', run_name='__main__', alter_sys=True)\n"
)


def not_applied(values: dict[str, Any]) -> list[str]:
    """Keys set in a local hub's values that a local hub ignores (Kubernetes-only), e.g.
    `singleuser.storage` or `hub.config.KubeSpawner.profile_list`."""

    out: set[str] = set()
    for path in leaves(values):
        if any(path[: len(h)] == h for h in HONOURED):
            if (
                path[:3] == ("jupyterhub", "hub", "config")
                and len(path) > 3
                and path[3] in (KUBERNETES_ONLY_CLASSES)
            ):
                out.add(".".join(path[:5]))
            continue
        out.add(".".join(path[: 3 if path[0] == "jupyterhub" else 2]))
    return sorted(out)


def hub_config_from_values(values: dict[str, Any]) -> dict[str, Any]:
    """The traitlets config a local hub gets from its values (z2jh's, under `jupyterhub`):
    `hub.config` (without Kubernetes-only classes), the idle culler when `cull.enabled`,
    and `singleuser` memory/cpu as Spawner limits (LocalProcessSpawner records but does not
    enforce them)."""
    values = values.get("jupyterhub") or {}
    config = (values.get("hub") or {}).get("config") or {}
    out = {
        cls: dict(traits)
        for cls, traits in config.items()
        if isinstance(traits, dict) and cls not in KUBERNETES_ONLY_CLASSES
    }
    single = values.get("singleuser") or {}
    limits = {
        trait: single[section][key]
        for trait, section, key in (
            ("mem_limit", "memory", "limit"),
            ("mem_guarantee", "memory", "guarantee"),
            ("cpu_limit", "cpu", "limit"),
            ("cpu_guarantee", "cpu", "guarantee"),
        )
        if key in (single.get(section) or {})
    }
    if limits:
        # The hub's own hub.config Spawner settings win over the singleuser shorthand.
        out["Spawner"] = {**limits, **out.get("Spawner", {})}
    cull = values.get("cull") or {}
    if cull.get("enabled"):
        cull = {**CULL_DEFAULTS, **cull}
        hub_cfg = out.setdefault("JupyterHub", {})
        command = [
            sys.executable,
            "-c",
            CULLER_MAIN,
            f"--timeout={int(cull['timeout'])}",
            f"--cull-every={int(cull['every'])}",
            f"--max-age={int(cull['maxAge'])}",
        ] + (["--cull-users=True"] if cull.get("users") else [])
        scopes = CULLER_SCOPES + (["admin:users"] if cull.get("users") else [])
        hub_cfg["services"] = [
            *hub_cfg.get("services", []),
            {"name": CULLER, "command": command, "display": False},
        ]
        hub_cfg["load_roles"] = [
            *hub_cfg.get("load_roles", []),
            {"name": CULLER, "services": [CULLER], "scopes": scopes},
        ]
    return out
