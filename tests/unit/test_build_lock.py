"""The test tools' build lock: a second builder on the same cache waits for the first.

Two runs building the same tool into one cache used to race (one removed the other's
output dir mid-copy). Real processes and a real flock; no tools are built.
"""

from __future__ import annotations

import subprocess
import sys
import time

from testenv import build

WAITER = """
import sys
from testenv import build
with build.build_lock():
    print("got the lock", flush=True)
"""


def test_a_second_builder_waits_for_the_first_and_then_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBFLEET_CACHE_DIR", str(tmp_path))
    with build.build_lock():
        with build.build_lock():  # re-entrant in the holder's thread
            pass
        waiter = subprocess.Popen(
            [sys.executable, "-c", WAITER],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(2.0)  # ample for an interpreter to start and take a free lock
            assert waiter.poll() is None, "the second builder did not wait for the lock"
        except BaseException:
            waiter.kill()
            raise
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert out.strip() == "got the lock"
    assert f"another build holds {tmp_path / 'build.lock'}; waiting" in err
