"""The `hubfleet` command line (`hubfleet.cli:main`): main.py holds the app and the
top-level commands, common.py what every command module shares, and each other module
the commands of one area (ops, health, clusters, credentials, pilot, events, locks, fleet,
status, import_fleet)."""

from hubfleet.cli.main import app, main

__all__ = ["app", "main"]
