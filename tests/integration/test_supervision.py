"""`make run` restarts a service that dies, as compose's `restart: unless-stopped` does.

One launcher (`python -m native`, as `make run` starts it) for the module:

    a. each kind of process SIGKILLed (redis-server, the Gunicorn master, both RQ workers,
       the nginx master) comes back with a new pid, healthy, the restart said in one console
       line; the book's request answers 200 afterwards, and throughout for the processes
       predictions do not go through (Redis, the workers)
    b. every RQ process (both workers and the training's work-horse) SIGKILLed mid-TPOT:
       predictions answer 200 throughout, all from the version served before, the job ends
       `failed` within the documented bound, the served model and its current.json are
       untouched and no half-written version is left, nothing of the old worker's tree
       (TPOT's Dask processes) is left, the workers come back and the next retrain runs
    b2. the training worker alone SIGKILLed mid-TPOT: its orphaned work-horse and TPOT's
       processes are killed before the new worker starts
    c. a service that keeps dying waits 1, 2, 4 ... s between restarts, and another one dying
       meanwhile is restarted without waiting for it
    d. SIGTERM still stops everything, restarted services included, and no zombie was left

Numbers are printed with a ``[supervision]`` prefix (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from redis import Redis
from rq import Worker

from native.proc import alive, descendants, parent
from native.stack import free_port
from tpotserve.registry import ModelRegistry
from tpotserve.settings import load_settings

from .conftest import API_KEY, BOOK_REQUEST, BOOTSTRAP_TIMEOUT_S, BUDGET, start_launcher, wait_for

RESTART_TIMEOUT_S = 90.0
KILLED_JOB_BOUND_S = 90.0  # RQ fails it ~65 s after the horse's last heartbeat (5 s interval + 60 s)
LONG_RETRAIN = {"dataset": "iris", "max_time_mins": 2, "generations": 100, "population_size": 6, "cv": 3,
                "promote": "never"}
FOLLOW_RETRAIN = {"dataset": "iris", "max_time_mins": 0.5, "generations": 2, "population_size": 6, "cv": 3,
                  "promote": "never"}


def say(message: str) -> None:
    print(f"[supervision] {message}", flush=True)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_rq(command: str) -> bool:
    """An RQ worker or its work-horse (a fork of it, with the same command line)."""
    return " worker --config tpotserve_trainer.rq_config " in command and "/rq " in command


# Each service's leader as a direct child of the launcher, told apart by its command line.
LEADERS: dict[str, Callable[[str], bool]] = {
    "redis": lambda c: c.split(" ", 1)[0].endswith("redis-server"),
    "api": lambda c: "/gunicorn " in c,
    "worker": lambda c: is_rq(c) and c.endswith(" training"),
    "worker-control": lambda c: is_rq(c) and c.endswith(" control"),
    "nginx": lambda c: c.startswith("nginx: master process"),
    "scheduler": lambda c: "-m tpotserve_trainer.scheduler" in c,
}


@dataclass
class Launcher:
    popen: subprocess.Popen
    url: str
    data_dir: Path
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> None:
        for line in self.popen.stdout:
            with self.lock:
                self.lines.append(line)

    def output(self) -> str:
        with self.lock:
            return "".join(self.lines)

    def supervisor_lines(self) -> list[str]:
        return [line.split("|", 1)[1].strip() for line in self.output().splitlines()
                if line.lstrip().startswith("supervisor |")]

    def said_back(self, name: str, pid: int, since: int = 0) -> list[str] | None:
        """The supervisor's lines from the ``since``-th on, once one says ``name`` is back as ``pid``."""
        said = self.supervisor_lines()[since:]
        back = f"{name} back: pid {pid}, healthy after"
        return said if any(line.startswith(back) for line in said) else None

    def leaders(self, name: str) -> set[int]:
        """Live direct children of the launcher that look like ``name``'s leader (an adopted
        orphan with the same command line counts too, until the supervisor kills it)."""
        return {pid for pid in descendants(self.popen.pid)
                if parent(pid) == self.popen.pid and alive(pid) and LEADERS[name](cmdline(pid))}

    def leader(self, name: str) -> int:
        pids = wait_for(lambda: self.leaders(name) if len(self.leaders(name)) == 1 else None,
                        timeout_s=RESTART_TIMEOUT_S, what=f"one {name} leader")
        return next(iter(pids))

    def replaced(self, name: str, old: int) -> int:
        """The pid of ``name``'s leader once it is a single process other than ``old``."""
        def new() -> int | None:
            pids = self.leaders(name)
            return next(iter(pids)) if len(pids) == 1 and old not in pids else None

        return wait_for(new, timeout_s=RESTART_TIMEOUT_S, what=f"a new {name} in place of pid {old}")

    def redis(self) -> Redis:
        # redis-server's title names its address: "/usr/bin/redis-server 127.0.0.1:PORT".
        address = cmdline(self.leader("redis")).split()[1]
        return Redis(port=int(address.rsplit(":", 1)[1]), socket_timeout=5)

    def every_api_worker_serves(self) -> bool:
        """Every Gunicorn worker has loaded a model (one 200 only says one of them has: the
        others pick the bootstrap model up within their poll interval)."""
        workers = load_settings().api_workers
        seen: dict[int, bool] = {}
        for _ in range(10 * workers):
            body = requests.get(self.url + "/readyz", timeout=10).json()
            if "worker_pid" not in body:  # nginx's own 503: the API is not up
                return False
            seen[body["worker_pid"]] = bool(body["model_loaded"])
        return len(seen) >= workers and all(seen.values())

    def predict(self) -> requests.Response:
        return requests.post(self.url + "/predict", json=BOOK_REQUEST, timeout=10)

    def retrain(self, body: dict) -> str:
        """POST /retrain with the admin key; the new job's id."""
        response = requests.post(self.url + "/retrain", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                                 timeout=30)
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.url}/jobs/{job_id}", timeout=10).json()

    def ended(self, job_id: str) -> dict | None:
        body = self.job(job_id)
        return body if body["status"] in ("finished", "failed", "canceled") else None

    def store_dir(self) -> Path:
        """The default model's store (as native/stack.py lays out DATA_DIR)."""
        return ModelRegistry(self.data_dir / "models", None, "iris").store().root

    def registered(self) -> set[int]:
        """The pids of the RQ workers registered in Redis."""
        return {worker.pid for worker in Worker.all(connection=self.redis())}


class PredictLoop:
    """One client posting the book's request until stopped; every answer but a 200 is kept."""

    def __init__(self, url: str) -> None:
        self.url = url + "/predict"
        self.count = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PredictLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    response = session.post(self.url, json=BOOK_REQUEST, timeout=10)
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        self.versions.add(response.headers["X-Model-Version"])
                except requests.RequestException as exc:
                    self.failures.append(repr(exc)[:200])
                self.count += 1
                self._stop.wait(0.05)  # pacing only


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    port = free_port()
    data_dir = tmp_path_factory.mktemp("supervised") / "data"
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "GATEWAY_PORT": str(port),
        "API_KEY": API_KEY,
        **BUDGET,
    }
    popen = start_launcher(env)
    run = Launcher(popen, f"http://127.0.0.1:{port}", data_dir)
    threading.Thread(target=run.read, daemon=True).start()
    try:
        wait_for(lambda: "\nready: " in run.output() or popen.poll() is not None, timeout_s=120,
                 what="the launcher's ready line")
        assert popen.poll() is None, run.output()[-3000:]
        wait_for(lambda: run.every_api_worker_serves(), timeout_s=BOOTSTRAP_TIMEOUT_S, interval_s=0.5,
                 what="the bootstrap model on every API worker")
        yield run
    finally:
        if popen.poll() is None:
            # A test failed before test_d: stop it as a user would, so the services (each in
            # a process group of its own) go too; SIGKILL whatever is left only after that.
            started = descendants(popen.pid)
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
            for pid in started:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def healthy(run: Launcher, name: str, pid: int) -> bool:
    if name == "redis":
        return requests.get(run.url + "/readyz", timeout=10).json().get("queue") == "ok"
    if name in ("worker", "worker-control"):
        return pid in run.registered()
    if name == "scheduler":  # removed before it is started again; written after its first tick
        return (run.data_dir / "scheduler" / "scheduler.alive").exists()
    return run.predict().status_code == 200


@pytest.mark.parametrize("name", ["redis", "api", "worker", "worker-control", "scheduler", "nginx"])
def test_a_sigkilled_service_comes_back(launcher: Launcher, name: str) -> None:
    old = launcher.leader(name)
    restarts_before = len(launcher.supervisor_lines())
    # Predictions do not go through Redis or the workers: those may die without a failed request.
    loop = PredictLoop(launcher.url) if name in ("redis", "worker", "worker-control", "scheduler") else None
    with loop or _nothing():
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        new = launcher.replaced(name, old)
        wait_for(lambda: healthy(launcher, name, new), timeout_s=RESTART_TIMEOUT_S, interval_s=0.2,
                 what=f"the new {name} healthy")
        back_s = time.monotonic() - killed_at
        # The supervisor says so once its own health check passed, maybe after ours.
        try:
            said = wait_for(lambda: launcher.said_back(name, new, since=restarts_before),
                            timeout_s=RESTART_TIMEOUT_S, what=f"the supervisor's line on {name} being back")
        except AssertionError as exc:  # say what it said instead, and what the service logged
            raise AssertionError(f"{exc}; pid {new}; the supervisor said: "
                                 f"{launcher.supervisor_lines()[restarts_before:]}; "
                                 f"{name}'s last lines: {launcher.output().splitlines()[-30:]}") from None
    say(f"{name}: pid {old} SIGKILLed, pid {new} healthy after {back_s:.1f} s; said: {said}")
    died = rf"{name} killed by SIGKILL \(status -9\); restart \d+ in [0-9.]+ s"
    assert any(re.fullmatch(died, line) for line in said), said
    assert launcher.predict().status_code == 200
    if loop is not None:
        say(f"  predictions meanwhile: {loop.count}, failed: {len(loop.failures)}")
        assert loop.count > 0
        assert loop.failures == [], loop.failures[:5]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_b_every_rq_process_sigkilled_mid_training(launcher: Launcher) -> None:
    job_id = launcher.retrain(LONG_RETRAIN)
    worker = launcher.leader("worker")
    control = launcher.leader("worker-control")

    def searching() -> bool:
        body = launcher.job(job_id)
        # TPOT's own Dask processes run below the work-horse by the time it reports a generation.
        return body["status"] == "started" and bool((body.get("progress") or {}).get("generation"))

    wait_for(searching, timeout_s=180, interval_s=0.25, what="TPOT past its first generation")
    pointer = launcher.store_dir() / "current.json"
    pointer_bytes = pointer.read_bytes()
    served = json.loads(pointer_bytes)["version"]
    old_tree = descendants(worker) | {worker}
    rq = {pid for pid in descendants(launcher.popen.pid) if is_rq(cmdline(pid))}
    assert {worker, control} < rq, (worker, control, rq)  # the two workers and the horse at least
    with PredictLoop(launcher.url) as loop:
        killed_at = time.monotonic()
        for pid in rq:
            os.kill(pid, signal.SIGKILL)
        job = wait_for(lambda: launcher.ended(job_id), timeout_s=KILLED_JOB_BOUND_S + 30, interval_s=0.25,
                       what=f"job {job_id} ended")
        failed_s = time.monotonic() - killed_at
        assert pointer.read_bytes() == pointer_bytes
        new_worker = launcher.replaced("worker", worker)
        new_control = launcher.replaced("worker-control", control)
        wait_for(lambda: {new_worker, new_control} <= launcher.registered(), timeout_s=RESTART_TIMEOUT_S,
                 interval_s=0.2, what="both new workers registered")
        wait_for(lambda: not any(alive(pid) for pid in old_tree), timeout_s=30,
                 what="the old worker's tree gone")
        follow_id = launcher.retrain(FOLLOW_RETRAIN)
        follow_job = wait_for(lambda: launcher.ended(follow_id), timeout_s=240, interval_s=0.5,
                              what="the next retrain")
    say(f"every RQ process SIGKILLed mid-search ({len(rq)} rq processes, worker tree {len(old_tree)}): job "
        f"{job['status']} {failed_s:.1f} s after the kill; predictions meanwhile {loop.count}, failed "
        f"{len(loop.failures)}; next retrain {follow_job['status']}")
    assert loop.failures == [], loop.failures[:5]
    assert loop.versions == {served}, loop.versions
    assert job["status"] == "failed", job
    assert "stopped unexpectedly" in job["error"], job["error"]
    assert failed_s < KILLED_JOB_BOUND_S
    assert follow_job["status"] == "finished", (follow_job["status"], follow_job["error"])
    assert follow_job["result"]["published"] is False  # promote=never: the served model stays
    # The served model is untouched, and nothing half-written is current, listed or left behind.
    assert pointer.read_bytes() == pointer_bytes
    listed = requests.get(launcher.url + "/models", timeout=10).json()
    assert listed["current"] == served
    assert not [m["version"] for m in listed["versions"] if m["version"].startswith(".")]
    assert not [p.name for p in (launcher.store_dir() / "versions").iterdir() if p.name.startswith(".")]
    assert launcher.said_back("worker", new_worker) and launcher.said_back("worker-control", new_control)


def test_b2_a_killed_workers_orphaned_horse_is_killed_before_the_restart(launcher: Launcher) -> None:
    job_id = launcher.retrain(LONG_RETRAIN)
    worker = launcher.leader("worker")
    wait_for(lambda: (launcher.job(job_id).get("progress") or {}).get("generation"), timeout_s=180,
             interval_s=0.25, what="TPOT past its first generation")
    horse_tree = descendants(worker)
    assert any(is_rq(cmdline(pid)) for pid in horse_tree), horse_tree  # the horse, TPOT's processes below it
    since = len(launcher.supervisor_lines())
    os.kill(worker, signal.SIGKILL)  # the worker only: its horse, in a group of its own, runs on

    # Not launcher.replaced(): the orphaned horse, adopted by the launcher with the worker's
    # command line, looks like a new leader until the supervisor kills it.
    def back() -> int | None:
        said = (re.fullmatch(r"worker back: pid (\d+), healthy after .*", line)
                for line in launcher.supervisor_lines()[since:])
        return next((int(m[1]) for m in said if m), None)

    new = wait_for(back, timeout_s=RESTART_TIMEOUT_S, what="the supervisor's line on the new worker being back")
    assert new not in horse_tree
    assert not any(alive(pid) for pid in horse_tree), {pid: cmdline(pid) for pid in horse_tree if alive(pid)}
    assert launcher.leaders("worker") == {new}
    wait_for(lambda: new in launcher.registered(), timeout_s=30, what="the new worker registered in Redis")


def test_c_backoff_doubles_and_never_holds_up_another_service(launcher: Launcher) -> None:
    since = len(launcher.supervisor_lines())
    nginx = launcher.leader("nginx")
    for kill in range(3):
        os.kill(nginx, signal.SIGKILL)
        if kill == 2:
            # nginx now waits its longest delay yet; Redis, dying meanwhile, is not held up by it.
            os.kill(launcher.leader("redis"), signal.SIGKILL)
        nginx = launcher.replaced("nginx", nginx)
        wait_for(lambda: launcher.said_back("nginx", nginx, since=since), timeout_s=RESTART_TIMEOUT_S,
                 what="the supervisor's line on nginx being back")
    said = launcher.supervisor_lines()[since:]
    say(f"nginx killed 3 times, Redis once meanwhile; said: {said}")
    died = r"nginx killed by SIGKILL \(status -9\); restart (\d+) in ([0-9.]+) s"
    restarts = [(int(m[1]), float(m[2])) for m in (re.fullmatch(died, line) for line in said) if m]
    assert len(restarts) == 3, said
    assert [n - restarts[0][0] for n, _ in restarts] == [0, 1, 2], restarts
    assert [d / restarts[0][1] for _, d in restarts] == [1, 2, 4], restarts
    redis_back = next(i for i, line in enumerate(said) if line.startswith("redis back: pid "))
    nginx_back = max(i for i, line in enumerate(said) if line.startswith("nginx back: pid "))
    assert redis_back < nginx_back, said
    wait_for(lambda: launcher.predict().status_code == 200, timeout_s=RESTART_TIMEOUT_S, what="a 200 again")


def zombies(pid: int) -> set[int]:
    return {child for child in descendants(pid) if parent(child) == pid and not alive(child)}


def test_d_sigterm_still_stops_everything(launcher: Launcher) -> None:
    started = descendants(launcher.popen.pid)
    assert started
    # Every orphan the launcher adopted (the killed processes' leftovers) has been reaped.
    wait_for(lambda: not zombies(launcher.popen.pid), timeout_s=10, what="no zombie left below the launcher")
    launcher.popen.send_signal(signal.SIGTERM)
    assert launcher.popen.wait(timeout=60) == 0
    wait_for(lambda: not any(alive(pid) for pid in started), timeout_s=10, what="every child gone")
    with pytest.raises(requests.ConnectionError):
        requests.get(launcher.url + "/healthz", timeout=2)
