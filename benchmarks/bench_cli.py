"""CLI start-up: `hubfleet validate`, `show` and `--help` against bare Python (issue 16).

Each command is run N times as a new process on the example fleet (wall time: median and
worst), beside `python -c pass` measured the same way in the same run, with the machine's
load. It also records whether the command imported Prefect or a cloud SDK (it must not:
these commands only read YAML). Target: validate <= 0.5 s.

    .venv/bin/python benchmarks/bench_cli.py [--runs 10]

Writes benchmarks/results/cli.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HUBFLEET = str(Path(sys.executable).parent / "hubfleet")
HEAVY = ("prefect", "kubernetes", "google.cloud", "boto3", "azure")

COMMANDS = {
    "bare python": [sys.executable, "-c", "pass"],
    "validate": [HUBFLEET, "validate", str(REPO / "fleet")],
    "show": [HUBFLEET, "show", "local/prod"],
    "--help": [HUBFLEET, "--help"],
}


def wall(argv: list[str], runs: int) -> list[float]:
    env = {**os.environ, "HUBFLEET_FLEET": str(REPO / "fleet")}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True, cwd=REPO)
        times.append(time.perf_counter() - start)
    return times


def heavy_imports(argv: list[str]) -> list[str]:
    """The heavy packages the command imported (python -X importtime)."""
    script = "import sys; from hubfleet.cli import main; sys.argv = sys.argv[1:]; main()"
    env = {**os.environ, "HUBFLEET_FLEET": str(REPO / "fleet")}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script, "hubfleet", *argv[1:]],
        env=env, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    modules = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    load = os.getloadavg()
    figures: dict[str, dict[str, object]] = {}
    for name, argv in COMMANDS.items():
        times = wall(argv, args.runs)
        figures[name] = {
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
            "heavy_imports": [] if name == "bare python" else heavy_imports(argv),
        }
        print(
            f"{name:12} median {figures[name]['median_s']:.3f}s  max {figures[name]['max_s']:.3f}s"
        )
    result = {
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "commands": figures,
        "validate_target_s": 0.5,
        "validate_met": figures["validate"]["median_s"] <= 0.5,  # type: ignore[operator]
    }
    out = REPO / "benchmarks" / "results" / "cli.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if any(f["heavy_imports"] for f in figures.values()):
        sys.exit("a fast command imported a heavy package (see heavy_imports)")


if __name__ == "__main__":
    main()
