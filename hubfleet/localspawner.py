"""The spawner of `local` hubs run by root: user servers as an unprivileged account.

Loaded by the hub process (its config imports it; see hubfleet/localusers.py for the
why). Every hub user's server runs as the one system account, in its own home
`<homes>/<user>` (0700, the account's), with the user-server venv's Python. The drop happens
in the child before exec, whatever `Spawner.cmd` a hub's values set, so no configured
command runs as root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from traitlets import Unicode

from hubfleet.localusers import ensure_home, home_name


class AccountSpawner(LocalProcessSpawner):
    account = Unicode("hubfleet-user", config=True, help="The system account servers run as.")
    homes = Unicode(config=True, help="The directory holding one home per hub user.")
    env_dir = Unicode(config=True, help="The user-server venv (its bin/ leads PATH).")

    @property
    def home_dir(self) -> str:
        return str(Path(self.homes) / home_name(self.user.name))

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        drop = set_user_setuid(self.account, chdir=False)
        home = self.home_dir

        def preexec() -> None:
            drop()
            os.chdir(home)

        return preexec

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        env["USER"] = self.account
        env["HOME"] = self.home_dir
        env["SHELL"] = "/bin/bash"
        env["PATH"] = f"{self.env_dir}/bin:/usr/local/bin:/usr/bin:/bin"
        env["VIRTUAL_ENV"] = self.env_dir
        # The hub's interpreter and import path are not the user server's.
        env.pop("PYTHONPATH", None)
        return env

    async def start(self) -> Any:
        ensure_home(Path(self.homes), self.user.name, self.account)  # as root, before the drop
        return await super().start()

    async def move_certs(self, paths: dict[str, str]) -> dict[str, str]:
        return paths  # local hubs run without internal TLS
