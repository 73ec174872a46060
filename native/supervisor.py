"""Restart a native service that died, as compose's ``restart: unless-stopped`` does.

``make run`` uses this (opt-in: a bare :class:`~native.stack.NativeStack`, as the
integration tests drive it, is never restarted behind their back). One thread polls
every service; a dead one is restarted after an exponential backoff (1 s doubling to
30 s, back to 1 s once it has stayed up 30 s), each restart one console line.

Before a restart, what is left of the dead service is killed: its process group
(nginx's and Gunicorn's workers stay in their master's group and keep its port) and
its orphaned descendants (RQ's work-horse sits in a group of its own with TPOT's Dask
processes below it and outlives a SIGKILLed worker). The launcher is a child
subreaper, so those orphans are re-parented to it rather than to init and stay
findable; the supervisor remembers each service's tree by (pid, start time), kills
only processes it saw below the launcher, and reaps the adopted ones once dead.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .proc import Proc, below, process_table
from .processes import kill_all

PR_SET_CHILD_SUBREAPER = 36
BASE_DELAY_S = 1.0
MAX_DELAY_S = 30.0
STABLE_AFTER_S = 30.0
"""A service that stayed up this long starts its backoff at BASE_DELAY_S again."""
HEALTH_TIMEOUT_S = 60.0
"""How long one restart may wait for health: the other services wait for it meanwhile."""
POLL_S = 0.5


def become_subreaper() -> None:
    """Orphans of our descendants are re-parented to us instead of to init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name} (status {returncode})"
        except ValueError:
            pass
    return f"exited with status {returncode}"


class Running(Protocol):
    """One process the stack started (:class:`native.stack.Process`)."""

    popen: subprocess.Popen
    pump: threading.Thread


class Supervised(Protocol):
    """What the supervisor needs of the stack it keeps running (:class:`native.stack.NativeStack`)."""

    @property
    def processes(self) -> Mapping[str, Running]: ...
    @property
    def cancel(self) -> threading.Event: ...
    def start_service(self, name: str, timeout_s: float = ...) -> None: ...


@dataclass
class _Service:
    started_at: float
    delay_s: float = BASE_DELAY_S
    restarts: int = 0
    due: float | None = None
    """When a scheduled restart runs (None: running, or not yet seen dead)."""
    tree: set[Proc] = field(default_factory=set)
    """Every process seen in this service's tree since its last (re)start."""


class Supervisor:
    """Keeps every service of ``stack`` running; :meth:`start` it once the stack is up."""

    def __init__(self, stack: Supervised, health_timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        self.stack = stack
        self.health_timeout_s = health_timeout_s
        self._stop = threading.Event()
        now = time.monotonic()
        self._services = {name: _Service(started_at=now) for name in stack.processes}
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop supervising; a restart in progress gives up (``stack.cancel`` ends its health wait)."""
        self._stop.set()
        self.stack.cancel.set()
        self._thread.join(timeout=30)

    def kill_leftovers(self) -> None:
        """After ``stack.stop()``: whatever of any service's remembered tree still runs."""
        for name in list(self._services):
            self._kill_tree(name, process_table())
        self._reap(process_table())

    # --- the supervising thread ----------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - keep supervising; say what went wrong
                self._say(f"supervision error: {type(exc).__name__}: {exc}")

    def _tick(self) -> None:
        table = process_table()
        self._remember(table)
        self._reap(table)
        now = time.monotonic()
        for name, proc in list(self.stack.processes.items()):
            service = self._services.setdefault(name, _Service(started_at=now))
            returncode = proc.popen.poll()
            if returncode is None or service.due is not None:
                continue
            if now - service.started_at >= STABLE_AFTER_S:
                service.delay_s = BASE_DELAY_S
            service.restarts += 1
            service.due = now + service.delay_s
            self._say(
                f"{name} {describe_exit(returncode)}; restart {service.restarts} in {service.delay_s:g} s"
            )
            service.delay_s = min(service.delay_s * 2, MAX_DELAY_S)
        for name, service in self._services.items():
            if service.due is not None and service.due <= time.monotonic() and not self._stop.is_set():
                self._restart(name, service)

    def _restart(self, name: str, service: _Service) -> None:
        service.due = None
        old = self.stack.processes[name]
        self._kill_tree(name, process_table())
        old.pump.join(timeout=5)  # its log ends once nothing of it holds the pipe
        service.started_at = time.monotonic()
        try:
            # start_service replaces the dead entry in place: stop() keeps its order.
            self.stack.start_service(name, timeout_s=self.health_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the thread must outlive any one failed restart
            if not self._stop.is_set():  # stopping ends the health wait with stack.Cancelled
                self._say(self._failure(name, service, exc))
        else:
            pid = self.stack.processes[name].popen.pid
            took = time.monotonic() - service.started_at
            self._say(f"{name} back: pid {pid}, healthy after {took:.1f} s")
        self._remember(process_table())

    def _failure(self, name: str, service: _Service, exc: Exception) -> str:
        if isinstance(exc, TimeoutError):
            waited = f"{self.health_timeout_s:g} s"
            return f"{name} not healthy after {waited}; left running (restarted if it dies)"
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
        return f"{name} restart {service.restarts} failed: {reason}"

    def _remember(self, table: dict[int, Proc]) -> None:
        for name, proc in self.stack.processes.items():
            service = self._services.get(name)
            if service is None or proc.popen.poll() is not None:
                continue  # a dead leader's pid may be reused: only what is left of it counts now
            live = {table[pid] for pid in {proc.popen.pid, *below(table, proc.popen.pid)} if pid in table}
            # The fresh entries first: a horse's group changes after its fork.
            service.tree = live | {p for p in service.tree if _same(table, p)}

    def _kill_tree(self, name: str, table: dict[int, Proc]) -> None:
        """SIGKILL what is left of ``name``: its remembered tree, those processes' descendants,
        and members of their process groups, all only among the launcher's descendants."""
        service = self._services[name]
        ours = below(table, os.getpid())
        leader = self.stack.processes.get(name)  # gone once stack.stop() has stopped it
        groups = {p.pgid for p in service.tree} | ({leader.popen.pid} if leader else set())
        others = {
            pid
            for other, proc in self.stack.processes.items()
            if other != name and proc.popen.poll() is None
            for pid in {proc.popen.pid, *below(table, proc.popen.pid)}
        }
        for _ in range(3):  # again, for anything forked while we were killing
            targets = {p.pid for p in service.tree if _same(table, p)}
            targets |= {pid for pid in ours if table[pid].pgid in groups}
            for pid in list(targets):
                targets |= below(table, pid)
            targets = {pid for pid in targets & ours if table[pid].state != "Z"} - others
            if not targets:
                break
            kill_all(targets)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                table = process_table()
                if all(pid not in table or table[pid].state == "Z" for pid in targets):
                    break
                time.sleep(0.05)
            ours = below(table, os.getpid())
        service.tree = set()
        self._reap(table)

    def _reap(self, table: dict[int, Proc]) -> None:
        """waitpid adopted zombies; never a Popen's child, whose exit status Popen reads itself."""
        popens = {proc.popen.pid for proc in self.stack.processes.values()}
        me = os.getpid()
        for proc in table.values():
            if proc.ppid == me and proc.state == "Z" and proc.pid not in popens:
                try:
                    os.waitpid(proc.pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    @staticmethod
    def _say(message: str) -> None:
        sys.stdout.write(f"{'supervisor':>14} | {message}\n")
        sys.stdout.flush()


def _same(table: dict[int, Proc], proc: Proc) -> bool:
    """``proc`` still runs (not a zombie, and its pid not reused)."""
    now = table.get(proc.pid)
    return now is not None and now.started == proc.started and now.state != "Z"
