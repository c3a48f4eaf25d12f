"""`hubfleet audit --hub X --since 365d` over 100,000 flow runs in PostgreSQL.

Starts hubfleet's own PostgreSQL and a Prefect server on it (`hubfleet server --postgres`,
in a throwaway data dir), creates the flows through the API, then inserts 100,000 flow runs
(25 hubs on 5 clusters, over 400 days, 5% failed) and their states with SQL straight into
Prefect's tables: creating them through the API would take hours on 2 cores and measures
nothing the audit does. Then it times the real `hubfleet audit` command (median of 5) with
each source (`--source database`, what `auto` picks on this setup, and `--source api`), the
queries alone, the CLI's start-up (`hubfleet --help`) and the load average, checks both
sources return the same rows, and records the database size.
Writes benchmarks/results/audit.json.
Everything it started is stopped by PID and its data deleted.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_AUDIT_RUNS", "100000"))
REPEAT = 5
HUB = "c1/h6"


def psql(pg: object, sql: str) -> str:
    from hubfleet.pgserver import pg_bin

    result = subprocess.run(
        [pg_bin("psql"), "-h", str(pg.socket_dir), "-U", "prefect", "-d", "prefect",  # type: ignore[attr-defined]
         "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True, text=True, timeout=1800, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def seed(pg: object, flows: list[str]) -> float:
    start = time.perf_counter()
    f0, f1 = flows
    psql(
        pg,
        f"""
        INSERT INTO flow_run (id, name, flow_id, tags, expected_start_time, start_time,
                              end_time, state_type, state_name, state_timestamp, parameters)
        SELECT gen_random_uuid(), 'bench-' || g,
               CASE WHEN g % 3 = 0 THEN '{f1}'::uuid ELSE '{f0}'::uuid END,
               jsonb_build_array(
                 CASE WHEN g % 3 = 0 THEN 'op:check_hub_health' ELSE 'op:deploy_hub' END,
                 'cluster:c' || (g % 5), 'hub:c' || (g % 5) || '/h' || (g % 25),
                 'operator:person' || (g % 7), 'revision:abc1234'),
               t, t, t + interval '30 seconds',
               CASE WHEN g % 20 = 0 THEN 'FAILED' ELSE 'COMPLETED' END::state_type,
               CASE WHEN g % 20 = 0 THEN 'Failed' ELSE 'Completed' END,
               t + interval '30 seconds',
               jsonb_build_object('cluster', 'c' || (g % 5), 'hub', 'h' || (g % 25))
        FROM generate_series(1, {RUNS}) AS g,
             LATERAL (SELECT now() - g * interval '{400 * 86400 // RUNS} seconds' AS t) AS x;
        INSERT INTO flow_run_state (flow_run_id, type, name, timestamp)
        SELECT id, state_type, state_name, end_time FROM flow_run WHERE name LIKE 'bench-%';
        UPDATE flow_run SET state_id = s.id FROM flow_run_state s
        WHERE s.flow_run_id = flow_run.id AND flow_run.name LIKE 'bench-%';
        ANALYZE;
        """,
    )
    return time.perf_counter() - start


def main() -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.audit_log import fetch_audit, fetch_audit_database
    from hubfleet.audit import build_query
    from hubfleet.server import any_free_port, postgres_stack

    root = Path(tempfile.mkdtemp(prefix="hubfleet-bench-audit-"))
    pg, server = postgres_stack(root, any_free_port())
    try:
        pg.ensure()
        server.ensure()
        with temporary_settings({PREFECT_API_URL: server.api_url}):

            async def flows() -> list[str]:
                async with get_client() as client:
                    return [
                        str(await client.create_flow_from_name(name))
                        for name in ("deploy_hub", "check_hub_health")
                    ]

            seed_s = seed(pg, asyncio.run(flows()))
            query = build_query(None, hub=HUB, since="365d")

            connect = {"host": str(pg.socket_dir), "user": "prefect", "database": "prefect"}
            query_times: dict[str, list[float]] = {"api": [], "database": []}
            counts, api_rows, db_rows = set(), [], []
            for _ in range(REPEAT):
                start = time.perf_counter()
                api_rows = fetch_audit(server.api_url, query, server.ui_url)
                query_times["api"].append(time.perf_counter() - start)
                start = time.perf_counter()
                db_rows = fetch_audit_database(connect, query, server.ui_url) or []
                query_times["database"].append(time.perf_counter() - start)
                counts.update((len(api_rows), len(db_rows)))
            same_rows = sorted(api_rows, key=str) == sorted(db_rows, key=str)

        env = {**os.environ, "PREFECT_API_URL": server.api_url, "HUBFLEET_DATA_DIR": str(root)}
        cli_times: dict[str, list[float]] = {"database": [], "api": []}
        for source in cli_times:
            for _ in range(REPEAT):
                start = time.perf_counter()
                out = subprocess.run(
                    [str(REPO / ".venv/bin/hubfleet"), "audit", "--hub", HUB, "--since", "365d",
                     "--format", "json", "--source", source],
                    env=env, capture_output=True, text=True, timeout=300, check=True,
                )  # fmt: skip
                cli_times[source].append(time.perf_counter() - start)
                cli_rows = len(json.loads(out.stdout))
        start = time.perf_counter()
        subprocess.run(
            [str(REPO / ".venv/bin/hubfleet"), "--help"], capture_output=True, check=True
        )
        cli_startup_s = time.perf_counter() - start

        size = int(psql(pg, "SELECT pg_database_size('prefect')"))
        total = int(psql(pg, "SELECT count(*) FROM flow_run"))
        result = {
            "flow_runs": total,
            "hub": HUB,
            "since": "365d",
            "rows_returned": cli_rows,
            "query_rows": sorted(counts),
            "same_rows_both_sources": same_rows,
            "cli_median_s": round(statistics.median(cli_times["database"]), 3),
            **{
                f"cli_{src}_median_s": round(statistics.median(ts), 3)
                for src, ts in cli_times.items()
            },
            **{f"cli_{src}_times_s": [round(t, 3) for t in ts] for src, ts in cli_times.items()},
            **{
                f"query_{src}_median_s": round(statistics.median(ts), 3)
                for src, ts in query_times.items()
            },
            "cli_startup_s": round(cli_startup_s, 3),  # `hubfleet --help`: imports only
            "database_size_bytes": size,
            "database_size_mb": round(size / 2**20, 1),
            "seed_s": round(seed_s, 1),
            "load_average_1m": round(os.getloadavg()[0], 1),  # 2 cores, shared
            "target": "cli median <= 1 s (hubfleet server --postgres: the database source)",
        }
        out_file = REPO / "benchmarks" / "results" / "audit.json"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        server.stop()
        pg.remove()


if __name__ == "__main__":
    main()
