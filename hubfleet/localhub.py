"""The `local` provider's plan: what a hub's JupyterHub config and processes look like.

Pure functions only; `tasks/local_hub.py` writes the files and runs the processes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hubfleet.health import HEALTH_USER

#: The admin user that exists only to mint the first ops token; it can never log in
#: (local hubs use the null authenticator) and its tokens are revoked after bootstrap.
BOOTSTRAP_USER = "hubfleet-bootstrap"
#: Prefix of the API-managed service whose token hubfleet operates the hub with.
OPS_SERVICE_PREFIX = "hubfleet-ops"


@dataclass(frozen=True)
class Ports:
    public: int  # configurable-http-proxy: what users open
    proxy_api: int  # configurable-http-proxy's REST API, used by the hub
    hub: int  # the hub's own HTTP server, behind the proxy

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def render_config(
    *, hub: str, directory: Path, ports: Ports, hub_config: dict[str, Any], as_root: bool
) -> str:
    """jupyterhub_config.py for one local hub. It holds no secrets: those come by env."""
    config = {cls: dict(traits) for cls, traits in hub_config.items()}
    # hubfleet's bootstrap admin survives whatever admin_users the values set.
    auth = config.setdefault("Authenticator", {})
    auth["admin_users"] = sorted({*auth.get("admin_users", []), BOOTSTRAP_USER})
    # The health probe's user gets servers only through the API; it can never log in.
    auth["blocked_users"] = sorted({*auth.get("blocked_users", []), HEALTH_USER})
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
        "c.JupyterHub.spawner_class = 'simple'",
        f"c.SimpleLocalProcessSpawner.home_dir_template = '{directory / 'homes'}/{{username}}'",
        # jupyterhub-singleuser refuses to run as root without it (spawn fails with a 500).
        f"c.Spawner.args = {['--allow-root'] if as_root else []!r}",
        "c.JupyterHub.cleanup_servers = True",
        "# The hub's values (hub.config), applied as zero-to-jupyterhub does:",
        f"for _cls, _traits in json.loads({user_config!r}).items():",
        "    for _name, _value in _traits.items():",
        "        setattr(getattr(c, _cls), _name, _value)",
        "",
    ]
    return "\n".join(lines)


def hub_config_from_values(values: dict[str, Any]) -> dict[str, Any]:
    """The part of the chart values a local hub honours: `hub.config` (traitlets config)."""
    config = (values.get("hub") or {}).get("config") or {}
    return {cls: dict(traits) for cls, traits in config.items() if isinstance(traits, dict)}
