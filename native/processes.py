"""Process groups: start a command in a group of its own, and stop that group and its tree.

The launcher (:mod:`native.stack`), the supervisor and the benchmark's servers start every
process they own here and stop it with :func:`stop_group`: SIGTERM the group, wait, then
SIGKILL whatever of its tree is left, and nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from .proc import descendants


def start_group(
    argv: list[str], *, cwd: Path, stdout: int | IO, env: dict[str, str] | None = None, text: bool = False
) -> subprocess.Popen:
    """``argv`` with no stdin, stderr into ``stdout``, as the leader of a new process group."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=text,
        start_new_session=True,  # its own process group: we stop exactly what we started
    )


def signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except ProcessLookupError:
        pass


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    """Signal each of ``pids``; one already gone is no error."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_group(popen: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
    """Signal ``popen``'s process group, wait, then kill whatever of its tree is left."""
    # RQ's work-horse puts itself in a process group of its own (with TPOT's
    # Dask processes under it): remember the whole tree before it is orphaned.
    tree = descendants(popen.pid)
    signal_group(popen, sig)
    try:
        popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        signal_group(popen, signal.SIGKILL)
        popen.wait(timeout=10)
    signal_group(popen, signal.SIGKILL)
    kill_all(tree | descendants(popen.pid))
