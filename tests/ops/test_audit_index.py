"""hubfleet's tag index on Prefect's flow_run table (issue #19: the audit at 1,000,000 runs).

Real PostgreSQL (Debian's) and a real Prefect server on it, as `hubfleet server --postgres`
runs them; runs are inserted with SQL straight into Prefect's table (as
benchmarks/bench_audit.py does at 1,000,000): the index must be used for a hub's history,
and both audit sources must still return exactly the runs of the filter.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from deployments.audit_log import _sql, fetch_audit, fetch_audit_database
from hubfleet.audit import build_query
from hubfleet.pgserver import AUDIT_INDEX, Postgres, pg_bin
from hubfleet.server import PrefectServer, any_free_port, postgres_stack

RUNS = 20000  # 200 hubs, 100 runs each, one run every 20 minutes (278 days)


def psql(pg: Postgres, sql: str) -> str:
    return subprocess.run(
        [pg_bin("psql"), "-h", str(pg.socket_dir), "-U", "prefect", "-d", "prefect",
         "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Postgres, PrefectServer]]:
    pg, server = postgres_stack(tmp_path_factory.mktemp("audit-index"), any_free_port())
    try:
        pg.ensure()
        server.ensure()
        yield pg, server
    finally:
        server.stop()
        pg.remove()


def seed(pg: Postgres) -> None:
    flow = psql(pg, "INSERT INTO flow (name) VALUES ('deploy_hub') RETURNING id").split()[0]
    psql(
        pg,
        f"""INSERT INTO flow_run (id, name, flow_id, tags, expected_start_time, start_time,
                                  state_type, state_name, parameters)
            SELECT gen_random_uuid(), 'seeded-' || g, '{flow}'::uuid,
                   jsonb_build_array('op:deploy_hub', 'cluster:c' || (g % 200 % 20),
                                     'hub:c' || (g % 200 % 20) || '/h' || (g % 200)),
                   now() - g * interval '20 minutes', now() - g * interval '20 minutes',
                   CASE WHEN g % 20 = 1 THEN 'FAILED' ELSE 'COMPLETED' END::state_type,
                   CASE WHEN g % 20 = 1 THEN 'Failed' ELSE 'Completed' END, '{{}}'::jsonb
            FROM generate_series(1, {RUNS}) AS g""",
    )
    # Each run's state row (the API reads the outcome from it), as Prefect keeps them.
    psql(
        pg,
        """INSERT INTO flow_run_state (flow_run_id, type, name, timestamp)
           SELECT id, state_type, state_name, start_time FROM flow_run
           WHERE name LIKE 'seeded-%'""",
    )
    psql(
        pg,
        """UPDATE flow_run SET state_id = s.id FROM flow_run_state s
           WHERE s.flow_run_id = flow_run.id AND flow_run.name LIKE 'seeded-%'""",
    )
    psql(pg, "ANALYZE flow_run")


def plan(pg: Postgres, query: Any) -> str:
    sql, args = _sql(query, None)
    for n, arg in reversed(list(enumerate(args, 1))):
        value = arg.isoformat() if hasattr(arg, "isoformat") else arg
        sql = sql.replace(f"${n}", f"'{value}'")
    return psql(pg, "EXPLAIN " + sql)


def test_the_tag_index_serves_a_hubs_history_and_the_audit_stays_exact(
    stack: tuple[Postgres, PrefectServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    pg, server = stack
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", server.credential())
    seed(pg)
    query = build_query(None, hub="c7/h7", since="365d")
    before = fetch_audit_database(_connect(pg), query, server.ui_url)

    assert pg.ensure_audit_index() is True
    assert pg.ensure_audit_index() is False  # idempotent: a restart keeps the index
    psql(pg, "ANALYZE flow_run")
    assert AUDIT_INDEX in plan(pg, query), plan(pg, query)

    # Exact: both sources, with the index, return the seeded runs of that hub and year.
    expected = int(
        psql(
            pg,
            "SELECT count(*) FROM flow_run WHERE tags @> '[\"hub:c7/h7\"]'"
            " AND expected_start_time >= now() - interval '365 days'",
        )
    )
    assert expected == 100  # runs 7, 207, ... 19807: all this year
    db_rows = fetch_audit_database(_connect(pg), query, server.ui_url)
    api_rows = fetch_audit(server.api_url, query, server.ui_url)
    assert db_rows is not None and len(db_rows) == expected
    assert db_rows == before  # the index changes no row, nor their order
    assert sorted(api_rows, key=str) == sorted(db_rows, key=str)
    assert {r.target for r in db_rows} == {"c7/h7"}

    failures = build_query(None, states=["failed"], since="1d")  # fleet-wide: 72 runs a day
    day = fetch_audit_database(_connect(pg), failures, server.ui_url)
    assert day is not None and len(day) == 4 and {r.outcome for r in day} == {"Failed"}
    assert sorted(fetch_audit(server.api_url, failures, server.ui_url), key=str) == sorted(
        day, key=str
    )


def test_an_interrupted_index_build_is_rebuilt(stack: tuple[Postgres, PrefectServer]) -> None:
    """CREATE INDEX CONCURRENTLY killed midway leaves an invalid index: it is rebuilt."""
    pg, _server = stack
    pg.ensure_audit_index()
    psql(pg, f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{AUDIT_INDEX}'::regclass")
    assert pg.ensure_audit_index() is True
    valid = f"SELECT indisvalid FROM pg_index WHERE indexrelid = '{AUDIT_INDEX}'::regclass"
    assert psql(pg, valid) == "t"


def _connect(pg: Postgres) -> dict[str, Any]:
    return {"host": str(pg.socket_dir), "user": "prefect", "database": "prefect"}
