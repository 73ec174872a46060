"""The process table, read from ``/proc``: the one place that parses ``/proc/<pid>/stat``.

The launcher, the supervisor, the tests that kill and count processes, and the benchmark's
CPU accounting all read it from here. ``stat``'s second field is the command in parentheses,
which may itself hold spaces and parentheses, so the fields are read after the *last* ')'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Proc:
    """One process; equal to another by (pid, start time): that names a process, never a reused pid."""

    pid: int
    ppid: int = field(compare=False)
    pgid: int = field(compare=False)
    state: str = field(compare=False)
    started: int = 0
    """Start time in clock ticks since boot."""
    cpu_ticks: int = field(default=0, compare=False)
    """utime + stime, in clock ticks."""
    name: str = field(default="", compare=False)
    """The command name (``comm``), at most 15 characters."""


def _parse(pid: int, stat: str) -> Proc:
    head, tail = stat.rsplit(")", 1)
    fields = tail.split()  # fields[0] is stat's field 3 (the state)
    return Proc(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), state=fields[0], started=int(fields[19]),
                cpu_ticks=int(fields[11]) + int(fields[12]), name=head.split("(", 1)[1])


def read(pid: int) -> Proc | None:
    """``pid``'s entry, or None once it is gone (a zombie is still there: ``state == "Z"``)."""
    try:
        return _parse(pid, (PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Running: in the table and not a zombie."""
    proc = read(pid)
    return proc is not None and proc.state != "Z"


def parent(pid: int) -> int | None:
    proc = read(pid)
    return proc.ppid if proc is not None else None


def process_table() -> dict[int, Proc]:
    """Every process."""
    table: dict[int, Proc] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            proc = read(int(entry.name))
            if proc is not None:
                table[proc.pid] = proc
    return table


def below(table: dict[int, Proc], pid: int) -> set[int]:
    """The pids of every process under ``pid`` in ``table``."""
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now."""
    return below(process_table(), pid)


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` now."""
    return sorted(proc.pid for proc in process_table().values() if proc.ppid == pid)
