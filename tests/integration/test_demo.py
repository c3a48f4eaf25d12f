"""`hubfleet demo` end to end, as a user runs it: a real Prefect server on SQLite started
by the CLI, real JupyterHubs, then `--down`. Runs the installed `hubfleet` command."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import requests
from browser import Browser, LoggedIn

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OPERATIONS = (
    "create_event_hub/default",
    "remind_event_organizers/default",
    "expire_event_hub/default",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hubfleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # The command installed next to this interpreter (a worktree may share another's venv).
    exe = shutil.which("hubfleet", path=str(BIN)) or shutil.which("hubfleet") or "hubfleet"
    return subprocess.run(
        [exe, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=400
    )


def the_demo_in_the_ui(port: str, credential: str, profile: Path) -> None:
    """What the user sees when opening the demo's Prefect UI, in headless Chromium through
    tests/browser.py: every deployment, the next scheduled run of each that has one, the
    demo event's three runs Completed. Screenshots: benchmarks/results/demo-*.png."""
    api, auth = f"http://127.0.0.1:{port}/api", tuple(credential.split(":", 1))

    def post(path: str, body: dict[str, object]) -> list[dict[str, object]]:
        answer = requests.post(f"{api}/{path}", json=body, auth=auth, timeout=30)
        answer.raise_for_status()
        return list(answer.json())

    deployments = post("deployments/filter", {})
    flows = {f["id"]: str(f["name"]) for f in post("flows/filter", {})}
    shots = profile.parent
    with LoggedIn(f"http://127.0.0.1:{port}", credential) as proxy, Browser(profile) as page:
        # The deployments, all on one page: the list's page size is a UI setting, kept in
        # the browser's local storage.
        page.open(f"{proxy.url}/deployments")
        page.wait_for(f" {len(deployments)} Deployments ")
        page.call("Runtime.evaluate", expression="localStorage['deployment-list-limit'] = 100")
        page.open(f"{proxy.url}/deployments")
        rows = [f"{d['name']} {flows[str(d['flow_id'])]}" for d in deployments]
        page.wait_for(f" {len(deployments)} Deployments ", "Page 1 of 1", *rows)
        page.screenshot(shots / "demo-deployments.png")

        # Each deployment's next scheduled run (one that will not start while we look) is
        # in its Upcoming runs, at the time the API has (the page shows UTC).
        soon = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
        scheduled = 0
        for deployment in deployments:
            upcoming = post(
                "flow_runs/filter",
                {
                    "deployments": {"id": {"any_": [deployment["id"]]}},
                    "flow_runs": {
                        "state": {"type": {"any_": ["SCHEDULED"]}},
                        "expected_start_time": {"after_": soon},
                    },
                    "sort": "EXPECTED_START_TIME_ASC",
                    "limit": 1,
                },
            )
            if not upcoming:
                continue
            when = datetime.fromisoformat(str(upcoming[0]["expected_start_time"]))
            page.open(f"{proxy.url}/deployments/deployment/{deployment['id']}?tab=Upcoming")
            page.wait_for(
                f"Deployments {deployment['name']} Flow {flows[str(deployment['flow_id'])]}",
                f" {upcoming[0]['name']} ",
                f"Scheduled for {when.astimezone(UTC):%Y/%m/%d %I:%M:%S %p}",
            )
            scheduled += 1
        with_schedules = [d for d in deployments if d["schedules"]]
        # Every registry entry with a schedule (health x2, reap, drift, upgrade, rotation,
        # report, backups) is scheduled, and each shows its next run.
        from deployments.registry import OPERATIONS as REGISTERED

        wanted = sum(spec.schedule is not None for spec in REGISTERED)
        assert scheduled >= len(with_schedules) == wanted, (scheduled, len(with_schedules))

        # The demo event's runs, found by name as a user searches the Runs page.
        page.open(f"{proxy.url}/runs?flow-run-search=local%2Fdemo&hide-subflows=true")
        page.wait_for(
            " 3 runs ",
            *(
                re.compile(rf"\b{op.split('/')[0]} local/demo (?:(?!local/demo).)*?Completed")
                for op in OPERATIONS
            ),
        )
        page.screenshot(shots / "demo-runs.png", height=1150)

        # The expiry's own page (the README's screenshot): done, by the worker, with tags.
        (expire,) = post(
            "flow_runs/filter", {"flow_runs": {"name": {"any_": ["expire_event_hub local/demo"]}}}
        )
        page.open(f"{proxy.url}/runs/flow-run/{expire['id']}")
        page.wait_for(
            "Runs expire_event_hub local/demo", "Completed", "hub:local/demo",
            "Work Pool hubfleet",
        )  # fmt: skip
        time.sleep(2)  # the run graph (a canvas, no text to wait for) draws its nodes
        page.screenshot(shots / "demo-expire-run.png")


def test_demo_up_reuse_and_down(data_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["HUBFLEET_DATA_DIR"] = str(data_dir / "demo")
    env["HUBFLEET_FLEET"] = str(REPO / "fleet")  # the example fleet, whatever a test set
    port = str(free_port())

    # The demo event's steps 30 s apart (default 60 s): created after 30 s, reminded after
    # 60 s, expired after 90 s.
    first = hubfleet("demo", "--port", port, "--event-pace", "30", env=env)
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Traceback" not in first.stdout + first.stderr
        assert "Prefect server started" in first.stdout
        for hub, tier, kind in [
            ("local/staging", "staging", "standing"),
            ("local/prod", "prod", "standing"),
            ("local/workshop", "prod", "event"),
        ]:
            row = next(line for line in first.stdout.splitlines() if f" {hub} " in line)
            assert tier in row and kind in row and "healthy" in row, row
        assert f"http://127.0.0.1:{port}/runs" in first.stdout
        # The operating picture: deployments with their schedules, and a worker serving them.
        assert "hubfleet setup:" in first.stdout and "worker started (pid" in first.stdout
        assert "check_fleet_health/health-shallow │ */15 * * * *" in first.stdout, first.stdout

        # The demo event: scheduled, then created, reminded and expired by the worker while the
        # demo waited, each run printed as it completed. No notification block exists on a fresh
        # server: the demo fleet says `notify: []` and the demo says so.
        assert "demo event local/demo" in first.stdout
        assert "has `notify: []`" in first.stdout, first.stdout
        assert f"hubfleet status --fleet {data_dir / 'demo' / 'demo-fleet'}" in first.stdout
        for operation in OPERATIONS:
            done = [line for line in first.stdout.splitlines() if operation in line]
            assert any("local/demo  Completed  operator:schedule:" in line for line in done), done

        # The API answers only with the credential the server generated (0600 in its data dir).
        api = f"http://127.0.0.1:{port}/api"
        home = data_dir / "demo" / "prefect"
        credential = (home / "api-auth").read_text().strip()
        assert credential not in first.stdout + first.stderr
        auth = tuple(credential.split(":", 1))
        assert requests.get(f"{api}/health", timeout=10).status_code == 200
        for path, body in [
            ("block_documents/filter", {"include_secrets": True}),
            ("block_documents/filter", {"include_secrets": False}),
            ("flow_runs/filter", {"limit": 1}),
            ("deployments/filter", {}),
        ]:
            anonymous = requests.post(f"{api}/{path}", json=body, timeout=10)
            assert anonymous.status_code == 401, (path, anonymous.status_code)
            wrong = requests.post(
                f"{api}/{path}", json=body, auth=("hubfleet", "guess"), timeout=10
            )
            assert wrong.status_code == 401, (path, wrong.status_code)
        assert requests.post(f"{api}/flow_runs/", json={}, timeout=10).status_code == 401
        start_run = f"{api}/deployments/{uuid.uuid4()}/create_flow_run"
        assert requests.post(start_run, json={}, timeout=10).status_code == 401
        private_modes = {data_dir / "demo": 0o700, home: 0o700, home / "prefect.db": 0o600}
        private_modes |= {home / "api-auth": 0o600, home / "block-encryption-key": 0o600}
        for private, mode in private_modes.items():
            assert private.stat().st_mode & 0o777 == mode, (private, oct(private.stat().st_mode))
        # The key that decrypts block secrets is not in the database: a copy of it alone
        # reveals no ops token.
        with sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True) as db:
            keys = db.execute(
                "SELECT key FROM configuration WHERE key = 'ENCRYPTION_KEY'"
            ).fetchall()
        assert keys == []

        # The runs are in the server's history, with their tags.
        runs = requests.post(
            f"{api}/flow_runs/filter", json={"limit": 200}, auth=auth, timeout=10
        ).json()
        deploys = {tuple(sorted(r["tags"])) for r in runs if r["name"].startswith("deploy_hub ")}
        for hub in ("staging", "prod", "workshop"):
            assert any(f"hub:local/{hub}" in tags and "op:deploy_hub" in tags for tags in deploys)
        # The worker ran the demo event's scheduled runs: Completed, with their provenance.
        demo_runs = {
            r["name"]: r
            for r in requests.post(
                f"{api}/flow_runs/filter",
                json={
                    "flow_runs": {"tags": {"all_": ["hub:local/demo", "hubfleet:event-schedule"]}}
                },
                auth=auth,
                timeout=10,
            ).json()
        }
        assert sorted(demo_runs) == sorted(f"{op.split('/')[0]} local/demo" for op in OPERATIONS)
        for name, run in demo_runs.items():
            op = name.split()[0]
            assert run["state_type"] == "COMPLETED", (name, run["state_type"])
            assert run["deployment_id"] and run["work_pool_name"] == "hubfleet", run
            for tag in (f"op:{op}", "cluster:local", "event:" + op.split("_")[0]):
                assert tag in run["tags"], (tag, run["tags"])
            assert any(t.startswith("operator:schedule:") for t in run["tags"]), run["tags"]
        # One fleet revision for the whole demo: the demo fleet is written and committed, demo
        # event hub included, before anything runs.
        every = runs + list(demo_runs.values())
        revisions = {t for r in every for t in r["tags"] if t.startswith("revision:")}
        assert len(revisions) == 1 and "revision:uncommitted" not in revisions, revisions
        # The reminder ran and recorded where its message went: nowhere (no block on this
        # server). Its artifact is the record: the run's log lines are sent in batches by the
        # run's process and one can still be in flight (or, on a loaded machine, dropped by
        # Prefect's exit drain) when the run is already Completed.
        remind = demo_runs["remind_event_organizers local/demo"]
        artifacts = requests.post(
            f"{api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [remind["id"]]}}},
            auth=auth,
            timeout=10,
        ).json()
        reminders = [a for a in artifacts if a["key"] == "event-reminder-local-demo"]
        assert reminders, artifacts
        assert "Sent through: nothing" in reminders[0]["data"], reminders[0]["data"]
        assert "Mailed to: nobody" in reminders[0]["data"], reminders[0]["data"]
        assert not (data_dir / "demo" / "hubs" / "local" / "demo").exists()  # expired: removed
        listed = subprocess.run(
            [str(BIN / "prefect"), "flow-run", "ls", "--limit", "50", "-o", "json"],
            env={**env, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": credential},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert listed.returncode == 0, listed.stderr
        listed_runs = json.loads(listed.stdout)
        assert any(
            "hub:local/workshop" in r["tags"] and r["name"] == "check_hub_health local/workshop"
            for r in listed_runs
        )

        # The same picture in the Prefect UI, in a real browser.
        the_demo_in_the_ui(port, credential, tmp_path / "chromium")

        # A second demo while the first is running reuses it and changes nothing: the demo
        # event is not scheduled again (it already ran), whatever pace is asked.
        second = hubfleet("demo", "--port", port, "--event-pace", "5", "--no-wait", env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "Prefect server reused" in second.stdout
        assert second.stdout.count(": unchanged") == 3
        assert "hubfleet setup: 0 created, 0 updated," in second.stdout, second.stdout
        assert "worker reused (pid" in second.stdout, second.stdout
        assert "sync_event_schedules" not in second.stdout
        rows = [line for line in second.stdout.splitlines() if "│ local/demo" in line]
        assert len(rows) == 3 and all("COMPLETED" in row for row in rows), rows
        again_runs = requests.post(
            f"{api}/flow_runs/filter",
            json={"flow_runs": {"tags": {"all_": ["hub:local/demo"]}}},
            auth=auth,
            timeout=10,
        ).json()
        assert sorted(r["name"] for r in again_runs if "event:create" in r["tags"]) == [
            "create_event_hub local/demo"
        ]
        assert not (data_dir / "demo" / "hubs" / "local" / "demo").exists()
    except BaseException:
        hubfleet("demo", "--down", env=env)  # leave nothing running, whatever failed
        raise

    states = list((data_dir / "demo" / "hubs").glob("local/*/state.json"))
    pids = [json.loads(s.read_text())[k]["pid"] for s in states for k in ("hub", "proxy")] + [
        json.loads((data_dir / "demo/prefect/server.json").read_text())["pid"]
    ]
    pids.append(json.loads((data_dir / "demo/worker.json").read_text())["pid"])
    assert len(pids) == 8 and all(psutil.pid_exists(p) for p in pids)

    down = hubfleet("demo", "--down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []
    again = hubfleet("demo", "--down", env=env)
    assert "Prefect server: not running" in again.stdout and "worker: not running" in again.stdout


def test_server_restarts_on_its_port_after_a_crash(data_dir: Path) -> None:
    """Killed by PID mid-use, the server comes back on the same port (its connections in
    TIME_WAIT do not count as busy), and clients follow its state file; a port another
    program holds is an error naming it, not a silent move."""
    from hubfleet.server import PrefectServer

    home = data_dir / "crash" / "prefect"
    port = free_port()
    server = PrefectServer(home, port=port)
    server.ensure()
    try:
        auth = tuple(server.credential().split(":", 1))
        for _ in range(5):  # client connections, closed by the server when it dies
            requests.post(f"{server.api_url}/flow_runs/filter", json={}, auth=auth, timeout=10)
        pid = server.pid()
        assert pid is not None
        psutil.Process(pid).kill()
        psutil.Process(pid).wait(timeout=30)

        again = PrefectServer(home)  # no port given: the one it last ran on
        assert again.port == port
        assert again.ensure() is False
        assert again.port == port and again.healthy()
    finally:
        PrefectServer(home).stop()

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env["HUBFLEET_DATA_DIR"] = str(data_dir / "crash")
        taken = hubfleet("server", "--port", str(port), env=env)
    assert taken.returncode == 2, taken.stdout + taken.stderr
    assert f"port {port} is in use by another program" in taken.stderr
    assert "Traceback" not in taken.stderr
