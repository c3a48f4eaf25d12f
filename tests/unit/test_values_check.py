"""`hubfleet validate` checks every values file a hub uses (issue 20): each kind of mistake
gets an exact `file:line: key: message`, and no command prints a traceback on bad values.

The CLI runs in-process here (`hubfleet.cli.main`, as the console script does): an
exception escaping `main` would be a traceback, and fails the test. One subprocess test
per command checks the real console output too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fleetfiles import copy_example_fleet, edit

from hubfleet.layers import ValuesInvalid
from hubfleet.loader import FleetInvalid, load_fleet
from hubfleet.values import check_fleet_values, hub_layers

REPO = Path(__file__).resolve().parents[2]
COLLEGE = "clusters/gcp-central/college.values.yaml"


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the example fleet to break; no Prefect server configured."""
    root = copy_example_fleet(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("HUBFLEET_FLEET", str(root))
    return root


def write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def problems(root: Path) -> list[str]:
    """What `validate` reports: the registry's problems, else every hub's values problems."""
    try:
        fleet = load_fleet(root)
    except FleetInvalid as exc:
        found = exc.problems
    else:
        found = check_fleet_values(fleet)
    return [_masked(str(p), root) for p in found]


def _masked(text: str, root: Path) -> str:
    return text.replace(str(root.resolve()), "<fleet>").replace(str(root), "<fleet>")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `hubfleet ARGS` in this process; (exit code, stdout + stderr)."""
    from hubfleet.cli import main

    argv = sys.argv
    sys.argv = ["hubfleet", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --- one test per case, with the exact message -------------------------------------------


def test_example_fleet_values_are_valid() -> None:
    assert check_fleet_values(load_fleet(REPO / "fleet")) == []


def test_malformed_yaml(fleet: Path) -> None:
    write(fleet, COLLEGE, "singleuser:\n  memory: {limit: 2G\n")
    assert problems(fleet) == [
        f"<fleet>/{COLLEGE}:3: (yaml): invalid YAML: expected ',' or '}}', but got "
        "'<stream end>' at column 1; check indentation, ':' after keys and quoting"
    ]


def test_duplicate_key(fleet: Path) -> None:
    write(fleet, COLLEGE, "singleuser:\n  memory: {limit: 2G}\n  cpu: {limit: 1}\n  memory: {}\n")
    assert problems(fleet) == [
        f"<fleet>/{COLLEGE}:4: singleuser.memory: duplicate key: 'memory' is already set in "
        "the mapping that starts at line 2; keep one of them (merge their contents)"
    ]


def test_duplicate_top_level_key(fleet: Path) -> None:
    edit(fleet / "common.values.yaml", "  cull:", "  hub: {}\n  cull:")
    assert problems(fleet) == [
        "<fleet>/common.values.yaml:8: jupyterhub.hub: duplicate key: 'hub' is already set "
        "in the mapping that starts at line 4; keep one of them (merge their contents)"
    ]


def test_top_level_not_a_mapping(fleet: Path) -> None:
    write(fleet, COLLEGE, "singleuser memory 2G\n")
    write(fleet, "clusters/local/prod.values.yaml", "# sizes\n- small\n- large\n")
    assert problems(fleet) == [
        f"<fleet>/{COLLEGE}:1: (file): expected a mapping of keys (key: value lines), found "
        "a string 'singleuser memory 2G'",
        "<fleet>/clusters/local/prod.values.yaml:2: (file): expected a mapping of keys "
        "(key: value lines), found a list",
    ]


def test_empty_values_file_is_an_empty_layer(fleet: Path) -> None:
    write(fleet, COLLEGE, "# nothing yet\n")
    assert problems(fleet) == []


def test_not_utf8(fleet: Path) -> None:
    write(fleet, COLLEGE, b"singleuser:\n  image: {name: caf\xe9}\n")
    assert problems(fleet) == [
        f"<fleet>/{COLLEGE}:2: (file): not UTF-8 text (byte 31); save the file as UTF-8"
    ]


def test_missing_values_file(fleet: Path) -> None:
    (fleet / "common.values.yaml").unlink()
    assert problems(fleet) == [
        "<fleet>/fleet.yaml:6: values[0]: file 'common.values.yaml' not found in <fleet>; "
        "create it or fix the name"
    ]


def test_unknown_chart_key_names_file_and_line(fleet: Path) -> None:
    edit(fleet / COLLEGE, "  singleuser:", "  singleuserr:")
    assert problems(fleet) == [
        f"<fleet>/{COLLEGE}:6: jupyterhub.singleuserr: unknown key (did you mean "
        "'singleuser'?); allowed here: cull, custom, debug, enabled, fullnameOverride, global, "
        "httpRoute, hub, imagePullSecret, imagePullSecrets, ingress, nameOverride, prePuller, "
        "proxy, rbac, scheduling, singleuser"
    ]


def test_wrong_type_in_fleet_wide_file_is_listed_once(fleet: Path) -> None:
    edit(fleet / "common.values.yaml", "timeout: 3600", "timeout: an hour")
    # Every hub uses common.values.yaml: one problem, not ten.
    assert problems(fleet) == [
        "<fleet>/common.values.yaml:10: jupyterhub.cull.timeout: expected integer or null, "
        "found string 'an hour'"
    ]


def test_bounds_and_allowed_values(fleet: Path) -> None:
    write(
        fleet,
        "clusters/local/staging.values.yaml",
        "jupyterhub:\n  cull:\n    timeout: 10\n"
        "  proxy:\n    chp:\n      image: {pullPolicy: Sometimes}\n",
    )
    assert problems(fleet) == [
        # z2jh's schema bounds no duration (cull.timeout: 10 passes); it does bound choices.
        "<fleet>/clusters/local/staging.values.yaml:6: jupyterhub.proxy.chp.image.pullPolicy: "
        "found 'Sometimes'; allowed: None, '', 'IfNotPresent', 'Always', 'Never'",
    ]


def test_empty_value(fleet: Path) -> None:
    write(
        fleet,
        "clusters/local/staging.values.yaml",
        "jupyterhub:\n  hub:\n    config:\n  cull:\n    enabled:\n",
    )
    assert problems(fleet) == [
        "<fleet>/clusters/local/staging.values.yaml:5: jupyterhub.cull.enabled: expected "
        "boolean, found an empty value (null); give it a value or remove the key",
        "<fleet>/clusters/local/staging.values.yaml:3: jupyterhub.hub.config: expected object, "
        "found an empty value (null); give it a value or remove the key",
    ]


def test_cluster_values_file_is_checked(fleet: Path) -> None:
    write(
        fleet,
        "clusters/local/cluster.values.yaml",
        "\njupyterhub:\n  proxy:\n    chp: {replica: 2}\n",
    )
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.values.yaml:4: jupyterhub.proxy.chp.replica: unknown "
        "key; allowed here: containerSecurityContext, defaultTarget, errorTarget, "
        "extraCommandLineFlags, extraEnv, extraPodSpec, image, livenessProbe, networkPolicy, "
        "nodeSelector, pdb, readinessProbe, resources, revisionHistoryLimit, tolerations"
    ]


def test_absolute_values_path(fleet: Path) -> None:
    edit(fleet / "clusters/local/cluster.yaml", "[prod.values.yaml]", "[/etc/hostname]")
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.yaml:15: hubs[1].values[0]: '/etc/hostname' is an "
        "absolute path; values files must be inside the fleet directory <fleet>/: copy the "
        "file into <fleet>/clusters/local and list its name relative to that directory"
    ]


def test_dotdot_leaving_the_fleet(fleet: Path) -> None:
    edit(
        fleet / "clusters/local/cluster.yaml",
        "[prod.values.yaml]",
        "[../../../../../etc/hostname]",
    )
    assert problems(fleet) == [
        "<fleet>/clusters/local/cluster.yaml:15: hubs[1].values[0]: "
        "'../../../../../etc/hostname' leaves the fleet directory <fleet>/; values files must "
        "be inside it: copy the file into <fleet>/clusters/local and list its name relative "
        "to that directory"
    ]


def test_dotdot_inside_the_fleet_is_fine(fleet: Path) -> None:
    edit(
        fleet / "clusters/local/cluster.yaml",
        "[prod.values.yaml]",
        "[../gcp-central/college.values.yaml]",
    )
    assert problems(fleet) == []


def test_symlink_pointing_outside(fleet: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("hub: {}\n")
    (fleet / "clusters/local/prod.values.yaml").unlink()
    (fleet / "clusters/local/prod.values.yaml").symlink_to(outside)
    assert [p.replace(str(tmp_path), "<tmp>") for p in problems(fleet)] == [
        "<fleet>/clusters/local/cluster.yaml:15: hubs[1].values[0]: 'prod.values.yaml' is a "
        "symlink to <tmp>/elsewhere.yaml, outside the fleet directory <fleet>/; replace the "
        "link with a copy of the file"
    ]


def test_cluster_values_symlink_pointing_outside(fleet: Path, tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\n")
    (fleet / "clusters/local/cluster.values.yaml").symlink_to(tmp_path / "kubeconfig")
    assert [p.replace(str(tmp_path), "<tmp>") for p in problems(fleet)] == [
        "<fleet>/clusters/local/cluster.values.yaml:1: (file): 'cluster.values.yaml' is a "
        "symlink to <tmp>/kubeconfig, outside the fleet directory <fleet>/; replace the link "
        "with a copy of the file"
    ]


def test_every_broken_file_of_a_hub_is_listed(fleet: Path) -> None:
    write(fleet, "common.values.yaml", "a: [\n")
    write(fleet, COLLEGE, "- x\n")
    model = load_fleet(fleet)
    with pytest.raises(ValuesInvalid) as info:
        hub_layers(model, "gcp-central", model.cluster("gcp-central").hub("college"))
    message = _masked(str(info.value), fleet)
    assert message.splitlines()[0].startswith("<fleet>/common.values.yaml:2: (yaml): ")
    assert message.splitlines()[1].startswith(f"<fleet>/{COLLEGE}:1: (file): ")
    assert message.endswith(
        "values are invalid: 2 problem(s); fix the file named on each line. Nothing was applied."
    )


# --- the commands ---------------------------------------------------------------------------


def test_validate_notes_skipped_secret_values(fleet: Path, capsys, monkeypatch) -> None:
    code, output = cli(capsys, "validate", str(fleet))
    assert code == 0
    assert (
        "note: secret values in blocks (hub-values-<cluster>-<hub>) were not checked: no "
        "Prefect server configured (set PREFECT_API_URL to check them)" in output
    )
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # discard: nothing answers
    code, output = cli(capsys, "validate", str(fleet))
    assert code == 0
    assert "were not checked: the Prefect server at http://127.0.0.1:9/api did not answer" in (
        output
    )
    assert "fleet example-fleet is valid: 5 clusters, 10 hubs, 2 event hubs" in output


def test_show_export_and_deploy_give_the_validate_lines(
    fleet: Path, capsys, tmp_path: Path
) -> None:
    edit(fleet / COLLEGE, "  singleuser:", "  singleuserr:")
    expected = f"{COLLEGE}:6: jupyterhub.singleuserr: unknown key (did you mean 'singleuser'?)"
    before = (fleet / COLLEGE).read_text()
    code, output = cli(capsys, "validate", str(fleet))
    assert code == 2 and expected in output
    assert output.rstrip().endswith("fleet is invalid: 1 problem(s); nothing was run")

    for args in (
        ["show", "gcp-central/college", "--fleet", str(fleet)],
        ["export-hub", "gcp-central", "college", str(tmp_path / "bundle"), "--fleet", str(fleet)],
        ["deploy", "gcp-central", "college", "--dry-run", "--fleet", str(fleet)],
    ):
        code, output = cli(capsys, *args)
        assert code == 2, (args, output)
        assert expected in output, (args, output)
        assert "Nothing was applied." in output
    assert not (tmp_path / "bundle").exists()  # export wrote nothing
    assert (fleet / COLLEGE).read_text() == before


def test_local_hub_deploy_dry_run_reports_a_broken_file(fleet: Path, capsys) -> None:
    write(fleet, "clusters/local/prod.values.yaml", "hub: {}\nhub: {}\n")
    code, output = cli(capsys, "deploy", "local", "prod", "--dry-run", "--fleet", str(fleet))
    assert code == 2
    assert _masked(output, fleet).startswith(
        "<fleet>/clusters/local/prod.values.yaml:2: hub: duplicate key"
    )


def test_local_hub_refuses_values_outside_jupyterhub(fleet: Path, capsys) -> None:
    """A values file in another layout (z2jh keys at the top, as before hubs became z2jh
    releases) is an error on a local hub too, not silently ignored."""
    write(fleet, "clusters/local/prod.values.yaml", "hub:\n  config: {JupyterHub: {}}\n")
    code, output = cli(capsys, "deploy", "local", "prod", "--dry-run", "--fleet", str(fleet))
    assert code == 2
    assert (
        "<fleet>/clusters/local/prod.values.yaml:1: hub: unknown key; allowed here: "
        "daskGateway, global, jupyterhub" in _masked(output, fleet)
    )


def test_console_output_has_no_traceback(fleet: Path) -> None:
    write(fleet, COLLEGE, "singleuser: {}\nsingleuser: {}\n")
    for args in (["validate", str(fleet)], ["show", "gcp-central/college"]):
        done = subprocess.run(
            [sys.executable, "-m", "hubfleet.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HUBFLEET_FLEET": str(fleet)},
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        assert f"{COLLEGE}:2: singleuser: duplicate key" in done.stderr


# --- many ways to break the example fleet's values files ------------------------------------

FILES = [
    "common.values.yaml",
    COLLEGE,
    "clusters/local/staging.values.yaml",
    "clusters/local/prod.values.yaml",
]

Mutation = Callable[[str], str | bytes]


def _first_key(text: str) -> str:
    return next(line for line in text.splitlines() if not line.startswith("#")).split(":")[0]


MUTATIONS: dict[str, Mutation] = {
    "duplicate top-level key": lambda t: t + _first_key(t) + ": {}\n",
    "unclosed flow list": lambda t: t + "extra: [a, b\n",
    "unclosed flow mapping": lambda t: "x: {a: 1\n" + t,
    "tab indentation": lambda t: t + "cull:\n\ttimeout: 1\n",
    "bad indentation": lambda t: t + "cull:\n  timeout: 1\n    every: 2\n",
    "plain string": lambda t: "just some text\n",
    "a list": lambda t: "- " + t.replace("\n", "\n  "),
    "a number": lambda t: "42\n",
    "two documents": lambda t: t + "---\ncull: {}\n",
    "undefined alias": lambda t: t + "proxy: *nothing\n",
    "key: value: value": lambda t: "hub: config: x\n" + t,
    "unterminated quote": lambda t: t + "fullnameOverride: 'abc\n",
    "not UTF-8": lambda t: t.encode() + b"fullnameOverride: \xff\xfe\n",
    "unknown top-level key": lambda t: t + "singleuserr: {}\n",
    "unknown nested key": lambda t: t + "proxy:\n  chp:\n    replica: 2\n",
    "wrong scalar type": lambda t: t + "cull:\n  timeout: soon\n",
    "list for a mapping": lambda t: t + "singleuser: [a, b]\n",
    "mapping for a boolean": lambda t: t + "ingress:\n  enabled: {yes: 1}\n",
    "string for a list": lambda t: t + "ingress:\n  hosts: hub.example.org\n",
    "empty section": lambda t: t + "scheduling:\n  podPriority:\n",
    "number keys": lambda t: t + "1: one\n",
    "bad pattern": lambda t: t + "hub:\n  cookieSecret: not-hex\n",
    "nested duplicate": lambda t: t + "daskGateway:\n  enabled: false\n  enabled: true\n",
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutated_values_exit_2_naming_the_file(
    name: str, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = FILES[sorted(MUTATIONS).index(name) % len(FILES)]
    path = fleet / rel
    mutated = MUTATIONS[name](path.read_text())
    path.write_bytes(mutated if isinstance(mutated, bytes) else mutated.encode())
    hub = {
        COLLEGE: "gcp-central/college",
        "clusters/local/staging.values.yaml": "local/staging",
        "clusters/local/prod.values.yaml": "local/prod",
    }.get(rel, "byo-kube/course")
    for args in (["validate", str(fleet)], ["show", hub, "--fleet", str(fleet)]):
        code, output = cli(capsys, *args)  # an exception here would be a traceback
        assert code == 2, (name, rel, args, output)
        assert rel in output, (name, rel, args, output)
        assert "Traceback" not in output


PATH_MUTATIONS = {
    "absolute": ("[prod.values.yaml]", "[/etc/hostname]", "is an absolute path"),
    "dotdot": ("[prod.values.yaml]", "[../../../../../etc/hostname]", "leaves the fleet"),
    "home": ("[prod.values.yaml]", "['~/.kube/config']", "is an absolute path"),
    "missing": ("[prod.values.yaml]", "[prdo.values.yaml]", "not found"),
}


@pytest.mark.parametrize("name", sorted(PATH_MUTATIONS))
def test_values_paths_exit_2_naming_the_file(
    name: str, fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new, said = PATH_MUTATIONS[name]
    edit(fleet / "clusters/local/cluster.yaml", old, new)
    for args in (["validate", str(fleet)], ["show", "local/staging", "--fleet", str(fleet)]):
        code, output = cli(capsys, *args)
        assert code == 2, (name, args, output)
        assert "clusters/local/cluster.yaml:15: hubs[1].values[0]" in output
        assert said in output


def test_validate_checks_secret_values_when_the_server_answers(
    fleet: Path, capsys, monkeypatch
) -> None:
    """The server is a stand-in answering /health; the blocks are read by a stand-in of
    `load_secret_values` (the real one is exercised by the deploy tests)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import tasks.cluster_session

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args: object) -> None:
            pass

    secret = "not-a-string-but-secret"

    async def blocks(cluster: str, hub: str) -> dict[str, object]:
        return {"jupyterhub": {"hub": {"cookieSecret": [secret]}}} if hub == "college" else {}

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(tasks.cluster_session, "load_secret_values", blocks)
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{server.server_port}/api")
    try:
        code, output = cli(capsys, "validate", str(fleet))
    finally:
        server.shutdown()
    assert code == 2
    assert (
        "secret values (block hub-values-gcp-central-college): jupyterhub.hub.cookieSecret: "
        "expected string or null, found list (hidden: a secret value)" in output
    )
    assert secret not in output
