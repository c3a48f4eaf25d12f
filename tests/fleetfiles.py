"""Private copies of the example fleet for tests to change, and the one way to change them.

Every test that breaks or extends the fleet starts from `copy_example_fleet`, so a change to
`fleet/` (a new hub, a new line) reaches them all in the same way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def copy_example_fleet(parent: Path, name: str = "fleet") -> Path:
    """A private copy of the repository's example fleet at `parent/name`."""
    root = parent / name
    shutil.copytree(REPO / "fleet", root)
    return root


def edit(path: Path, old: str, new: str) -> None:
    """Replace the first `old` in `path`; a test whose `old` is gone fails as set-up."""
    text = path.read_text()
    assert old in text, f"test setup: {old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))
