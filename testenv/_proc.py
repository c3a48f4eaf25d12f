"""Process helpers shared by the control plane and the emulators: start-time-checked
PIDs (so a reused PID is never signalled), parent-death signal, stop by PID."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def proc_starttime(pid: int) -> int | None:
    """Kernel start time of a PID (jiffies since boot), to detect PID reuse; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces/parens: split after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # zombie: exited, not yet reaped
        return None
    return int(fields[19])


def set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    # PR_SET_PDEATHSIG = 1: the kernel sends SIGTERM to the child when its parent dies,
    # so no component outlives a crashed or killed test run.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def pdeathsig_preexec():
    """``preexec_fn`` that ties a child to this process, or None when not on the main thread:
    the kernel sends the signal when the *thread* that forked the child exits, so a control
    plane started from a worker thread (a Prefect task, say) would die with that thread."""
    return set_pdeathsig if threading.current_thread() is threading.main_thread() else None


@dataclass
class Component:
    """A started process: what the state file records about it."""

    name: str
    pid: int
    starttime: int | None
    log: str
    popen: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        st = proc_starttime(self.pid)
        return st is not None and st == self.starttime

    def to_json(self) -> dict:
        return {"name": self.name, "pid": self.pid, "starttime": self.starttime, "log": self.log}


def terminate_pids(components: list[Component], timeout: float = 10.0) -> None:
    """Stop components one by one, in the given order: SIGTERM by PID, wait up to
    ``timeout``, then SIGKILL. Order matters: a kube-apiserver stops in ~1 s while etcd
    is still up, but takes >10 s retrying once etcd is gone."""
    for c in components:
        if not c.alive():
            continue
        try:
            os.kill(c.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while c.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if c.alive():
            try:
                os.kill(c.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if c.popen is not None:
            try:
                c.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def log_tail(path: str | Path, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
