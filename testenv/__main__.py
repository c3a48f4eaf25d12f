"""``python -m testenv`` (``./dev testenv``): build, up, status, down. See cli.py."""

from testenv.cli import app

app(prog_name="./dev testenv")
