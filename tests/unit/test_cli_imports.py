"""The CLI's fast commands (validate, show, --help) read YAML only: they must not import
Prefect, the Kubernetes client or a cloud SDK, which cost seconds of start-up (issue 16).
Timings are in benchmarks/bench_cli.py; this checks the imports, which do not vary.

With a Prefect server configured, `validate` also reads the hubs' secret values layers from
their blocks, which needs Prefect: that is not the fast path, so the commands run here with
no PREFECT_API_* in their environment (as on a laptop with no server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("prefect", "kubernetes", "google.cloud", "boto3", "botocore", "azure", "requests")
SCRIPT = """
import sys
from hubfleet.cli import main
sys.argv = ["hubfleet", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r} or m.startswith({heavy!r}))
print("HEAVY", heavy)
"""


@pytest.mark.parametrize(
    "args", [["validate", "fleet"], ["show", "local/prod"], ["--help"], ["deploy", "--help"]]
)
def test_fast_commands_import_no_heavy_package(args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=HEAVY), *args],
        capture_output=True, text=True, cwd=REPO, timeout=60, env=env,
    )  # fmt: skip
    line = [x for x in result.stdout.splitlines() if x.startswith("HEAVY")]
    assert line == ["HEAVY []"], result.stdout[-2000:] + result.stderr[-2000:]


def test_command_modules_share_helpers_only_through_common() -> None:
    """Each hubfleet/cli/<area>.py imports what it shares from hubfleet/cli/common.py, by
    public names; no command module imports another (or its private helpers)."""
    import ast

    cli = REPO / "hubfleet" / "cli"
    bad = []
    for path in sorted(cli.glob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hubfleet.cli"):
                names = [a.name for a in node.names]
                if node.module != "hubfleet.cli.common" or any(n.startswith("_") for n in names):
                    bad.append(f"{path.name}:{node.lineno}: from {node.module} import {names}")
    assert not bad, "\n".join(bad)
