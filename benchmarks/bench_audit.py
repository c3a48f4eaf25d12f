"""`hubfleet audit` over 1,000,000 flow runs in PostgreSQL: a hub's year, and a day's failures.

Starts hubfleet's own PostgreSQL and a Prefect server on it (`hubfleet server --postgres`,
in a throwaway data dir), creates the flows through the API, then inserts 1,000,000 flow
runs (5,000 hubs on 500 clusters, over 400 days, 5% failed; 10% of them fleet-wide runs
tagged with a cluster and no hub) and their states with SQL straight into Prefect's
tables: creating them through the API would take days on 2 cores and measures nothing
the audit does (BENCH_AUDIT_RUNS overrides the count).

Two queries, each read both ways (`--source api`: the REST API; `--source database`: one
SQL query), median of 5, first on Prefect's own indexes, then with hubfleet's tag index
(`Postgres.ensure_audit_index`, what `hubfleet server --postgres` creates):
  hub_year:     `hubfleet audit --hub c6/h6 --since 365d`
  day_failures: `hubfleet audit --state failed --since 1d` (fleet-wide)
Targets: each <= 0.3 s (the query; the CLI's own start-up is reported beside it).
It checks that both sources return the same rows and exactly the runs the seed made for
that filter (counted in SQL), times the real CLI, and records the load average at the
start and the end (2 shared cores) and the database size.
Writes benchmarks/results/audit.json. Everything it started is stopped by PID and its
data deleted.
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
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("BENCH_AUDIT_RUNS", "1000000"))
HUBS, CLUSTERS = 5000, 500
REPEAT = 5
HUB = "c6/h6"
TARGET_S = 0.3
#: The CLI arguments of each query.
QUERIES = {
    "hub_year": ["--hub", HUB, "--since", "365d"],
    "day_failures": ["--state", "failed", "--since", "1d"],
}


def psql(pg: object, sql: str) -> str:
    from hubfleet.pgserver import pg_bin

    result = subprocess.run(
        [pg_bin("psql"), "-h", str(pg.socket_dir), "-U", "prefect", "-d", "prefect",  # type: ignore[attr-defined]
         "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True, text=True, timeout=3600, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def seed(pg: object, flows: list[str]) -> float:
    """RUNS runs, newest now, one every 400 days / RUNS; run g is on hub g % HUBS (on
    cluster (g % HUBS) % CLUSTERS), except every 10th, a fleet-wide run of its cluster."""
    start = time.perf_counter()
    f0, f1, f2 = flows
    step = 400 * 86400 / RUNS
    psql(
        pg,
        f"""
        INSERT INTO flow_run (id, name, flow_id, tags, expected_start_time, start_time,
                              end_time, state_type, state_name, state_timestamp, parameters)
        SELECT gen_random_uuid(), 'bench-' || g,
               CASE WHEN g % 10 = 0 THEN '{f2}'::uuid
                    WHEN g % 3 = 0 THEN '{f1}'::uuid ELSE '{f0}'::uuid END,
               CASE WHEN g % 10 = 0 THEN jsonb_build_array(
                      'op:upgrade_fleet', 'cluster:c' || (g % {CLUSTERS}),
                      'operator:person' || (g % 7), 'revision:abc1234')
                    ELSE jsonb_build_array(
                      CASE WHEN g % 3 = 0 THEN 'op:check_hub_health' ELSE 'op:deploy_hub' END,
                      'cluster:c' || (g % {HUBS} % {CLUSTERS}),
                      'hub:c' || (g % {HUBS} % {CLUSTERS}) || '/h' || (g % {HUBS}),
                      'operator:person' || (g % 7), 'revision:abc1234') END,
               t, t, t + interval '30 seconds',
               CASE WHEN g % 20 = 1 THEN 'FAILED' ELSE 'COMPLETED' END::state_type,
               CASE WHEN g % 20 = 1 THEN 'Failed' ELSE 'Completed' END,
               t + interval '30 seconds',
               jsonb_build_object('cluster', 'c' || (g % {HUBS} % {CLUSTERS}),
                                  'hub', 'h' || (g % {HUBS}))
        FROM generate_series(1, {RUNS}) AS g,
             LATERAL (SELECT now() - g * interval '{step} seconds' AS t) AS x;
        INSERT INTO flow_run_state (flow_run_id, type, name, timestamp)
        SELECT id, state_type, state_name, end_time FROM flow_run WHERE name LIKE 'bench-%';
        UPDATE flow_run SET state_id = s.id FROM flow_run_state s
        WHERE s.flow_run_id = flow_run.id AND flow_run.name LIKE 'bench-%';
        """,
    )
    for table in ("flow_run", "flow_run_state"):  # VACUUM runs outside a transaction
        psql(pg, f"VACUUM ANALYZE {table}")
    return time.perf_counter() - start


def expected_count(pg: object, query: Any) -> int:
    """What the seed made for `query`, counted in SQL independently of hubfleet's code."""
    where = ["TRUE"]
    for tag in query.tags:
        where.append(f"tags @> '[\"{tag}\"]'::jsonb")
    if query.since:
        where.append(f"expected_start_time >= '{query.since.isoformat()}'")
    if query.states:
        where.append("state_type::text IN (" + ",".join(f"'{s}'" for s in query.states) + ")")
    return int(psql(pg, "SELECT count(*) FROM flow_run WHERE " + " AND ".join(where)))


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def time_queries(api_url: str, ui_url: str, connect: dict[str, Any], queries: dict[str, Any],
                 expected: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """Each query through each source, median of REPEAT; both sources must agree and
    return exactly the expected runs."""
    from deployments.audit_log import fetch_audit, fetch_audit_database

    out: dict[str, Any] = {}
    for name, query in queries.items():
        times: dict[str, list[float]] = {"api": [], "database": []}
        api_rows, db_rows = [], []
        for _ in range(REPEAT):
            start = time.perf_counter()
            api_rows = fetch_audit(api_url, query, ui_url)
            times["api"].append(time.perf_counter() - start)
            start = time.perf_counter()
            db_rows = fetch_audit_database(connect, query, ui_url) or []
            times["database"].append(time.perf_counter() - start)
        out[name] = {
            "rows": len(db_rows),
            "expected_rows": expected[name],
            "exact": len(api_rows) == len(db_rows) == expected[name]
            and len({r.run for r in db_rows}) == len(db_rows)
            and sorted(api_rows, key=str) == sorted(db_rows, key=str),
            **{f"{src}_median_s": round(statistics.median(ts), 3) for src, ts in times.items()},
            **{f"{src}_times_s": [round(t, 3) for t in ts] for src, ts in times.items()},
        }
    return out


def time_cli(env: dict[str, str]) -> dict[str, Any]:
    """The real `hubfleet audit` command per query and source (median of REPEAT)."""
    out: dict[str, Any] = {}
    for name, args in QUERIES.items():
        for source in ("database", "api"):
            times = []
            for _ in range(REPEAT):
                start = time.perf_counter()
                run = subprocess.run(
                    [str(REPO / ".venv/bin/hubfleet"), "audit", *args, "--format", "json",
                     "--source", source],
                    env=env, capture_output=True, text=True, timeout=300, check=True,
                )  # fmt: skip
                times.append(time.perf_counter() - start)
            out[f"{name}_{source}_median_s"] = round(statistics.median(times), 3)
            out[f"{name}_{source}_rows"] = len(json.loads(run.stdout))
    return out


def main() -> None:
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from hubfleet.audit import build_query
    from hubfleet.pgserver import AUDIT_INDEX
    from hubfleet.server import any_free_port, postgres_stack

    load_at_start = load()
    root = Path(tempfile.mkdtemp(prefix="hubfleet-bench-audit-"))
    pg, server = postgres_stack(root, any_free_port())
    try:
        pg.ensure()
        server.ensure()
        os.environ.update(server.client_env())  # fetch_audit's auth

        async def flows() -> list[str]:
            async with get_client(httpx_settings={"auth": auth}) as client:
                return [
                    str(await client.create_flow_from_name(name))
                    for name in ("deploy_hub", "check_hub_health", "upgrade_fleet")
                ]

        auth = httpx.BasicAuth(*server.credential().split(":", 1))
        print(f"seeding {RUNS} runs ...", flush=True)
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            seed_s = seed(pg, asyncio.run(flows()))
        queries = {
            "hub_year": build_query(None, hub=HUB, since="365d"),
            "day_failures": build_query(None, states=["failed"], since="1d"),
        }
        expected = {name: expected_count(pg, q) for name, q in queries.items()}
        connect = {"host": str(pg.socket_dir), "user": "prefect", "database": "prefect"}
        print("timing the queries on Prefect's own indexes ...", flush=True)
        before = time_queries(server.api_url, server.ui_url, connect, queries, expected)
        start = time.perf_counter()
        created = pg.ensure_audit_index()
        index_s = time.perf_counter() - start
        psql(pg, "ANALYZE flow_run")
        print("timing the queries with hubfleet's tag index ...", flush=True)
        after = time_queries(server.api_url, server.ui_url, connect, queries, expected)
        env = {**os.environ, **server.client_env(), "HUBFLEET_DATA_DIR": str(root)}
        cli = time_cli(env)
        start = time.perf_counter()
        subprocess.run(
            [str(REPO / ".venv/bin/hubfleet"), "--help"], capture_output=True, check=True
        )
        cli_startup_s = time.perf_counter() - start

        size = int(psql(pg, "SELECT pg_database_size('prefect')"))
        total = int(psql(pg, "SELECT count(*) FROM flow_run"))
        index_size = int(psql(pg, f"SELECT pg_relation_size('{AUDIT_INDEX}')"))
        best = {
            name: min(after[name]["database_median_s"], after[name]["api_median_s"])
            for name in QUERIES
        }
        result = {
            "flow_runs": total,
            "hubs": HUBS,
            "clusters": CLUSTERS,
            "queries": {name: " ".join(args) for name, args in QUERIES.items()},
            "without_tag_index": before,
            "with_tag_index": after,
            "tag_index": {
                "created": created,
                "build_s": round(index_s, 1),
                "size_mb": round(index_size / 2**20, 1),
            },
            "cli": cli,
            "cli_startup_s": round(cli_startup_s, 3),  # `hubfleet --help`: imports only
            "target_s": TARGET_S,
            "meets_targets": {
                f"{name}_{src}": after[name][f"{src}_median_s"] <= TARGET_S
                for name in QUERIES
                for src in ("database", "api")
            },
            "all_exact": all(r["exact"] for r in (*before.values(), *after.values())),
            "best_query_s": best,
            "database_size_mb": round(size / 2**20, 1),
            "seed_s": round(seed_s, 1),
            "load_average_1_5_15_min_at_start": load_at_start,  # 2 shared cores
            "load_average_1_5_15_min_at_end": load(),
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
