"""Faults, each with a measurable pass: the stack keeps serving and recovers by itself.

    5. a bad artifact made current by hand (truncated / wrong pointer hash / unsigned):
       refused before unpickling, the old model keeps serving, visible in /readyz and the log
    4. a Gunicorn worker SIGKILLed under load: at most its in-flight requests fail, the
       master respawns one, and the replacement serves the current version
    3. Redis stopped: /predict keeps answering, the queue endpoints fail fast with a JSON 503,
       and after Redis comes back (AOF) everything recovers without restarting anything else
    1. versions activated back and forth every 2 s under 32 concurrent clients: zero errors
    2. the training worker SIGKILLed mid-TPOT: in test_supervision.py (b), where `make run`'s
       supervisor brings the workers back as compose does
    6. the disk fills up while the trainer writes (its own stack on a tiny tmpfs): the job
       fails cleanly and nothing half-written becomes current

The tests share the session stack with the other integration files, so each
destructive one restores what it broke in a ``finally``, and the module leaves every
service running, Redis up and the iris model that was current before it current again.
Numbers are printed with a ``[faults]`` prefix (run with ``-s`` to see them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from native.proc import alive
from native.stack import NativeStack, descendants, free_port

from .conftest import API_KEY, API_WORKERS, BOOK_REQUEST, SIGNING_KEY, LiveStack, wait_for

SERVICES = ("redis", "worker-control", "worker", "api", "nginx")
SMALL = {"max_time_mins": 0.25, "generations": 2, "population_size": 6, "cv": 3}
# The retrains that prove a recovery: small, but with room for TPOT's per-pipeline limit
# (half the budget) on a busy machine, so a slow start is not mistaken for a failed recovery.
RECOVERY = {**SMALL, "max_time_mins": 0.5}
SWAP_DEADLINE_S = 2.0
QUEUE_503_DEADLINE_S = 2.0


def say(message: str) -> None:
    print(f"[faults] {message}", flush=True)


# --- shared helpers ------------------------------------------------------------
@dataclass
class Sample:
    start: float
    end: float
    status: int | None  # None: no HTTP answer at all (connection error, timeout)
    version: str | None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class PredictLoad:
    """``clients`` threads posting the book's request in a loop, one requests.Session each."""

    def __init__(
        self, url: str, clients: int, body: dict | None = None, timeout_s: float = 30.0, pause_s: float = 0.0
    ) -> None:
        self.url = url + "/predict"
        self.body = body or BOOK_REQUEST
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        """Pacing between one client's requests (0: as fast as the stack answers)."""
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        self.started_at = 0.0
        self.stopped_at = 0.0

    def __enter__(self) -> PredictLoad:
        self.started_at = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)
        self.stopped_at = time.monotonic()

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    response = session.post(self.url, json=self.body, timeout=self.timeout_s)
                    sample = Sample(
                        start,
                        time.monotonic(),
                        response.status_code,
                        response.headers.get("X-Model-Version"),
                        None if response.ok else response.text[:300],
                    )
                except requests.RequestException as exc:
                    sample = Sample(start, time.monotonic(), None, None, repr(exc)[:300])
                with self._lock:
                    self.samples.append(sample)
                if self.pause_s:
                    self._stop.wait(self.pause_s)  # pacing only

    def count(self) -> int:
        with self._lock:
            return len(self.samples)

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def failures(self) -> list[Sample]:
        return [s for s in self.snapshot() if not s.ok]

    def summary(self) -> str:
        samples = self.snapshot()
        latencies = sorted(s.end - s.start for s in samples)
        duration = (self.stopped_at or time.monotonic()) - self.started_at
        statuses = Counter(s.status for s in samples)
        return (
            f"{len(samples)} requests in {duration:.1f} s ({len(samples) / max(duration, 1e-9):.0f}/s), "
            f"non-2xx {len(self.failures())}, statuses {dict(statuses)}, "
            f"latency p50 {_quantile(latencies, 0.5) * 1000:.0f} ms, p99 {_quantile(latencies, 0.99) * 1000:.0f} ms, "
            f"max {(latencies[-1] if latencies else 0) * 1000:.0f} ms"
        )


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def readyz_by_worker(stack: LiveStack, min_requests: int = 12, timeout_s: float = 15.0) -> dict[int, tuple[int, dict]]:
    """{gunicorn worker pid: (status, /readyz body)} once every API worker has answered.

    A new connection per request, so the Gunicorn workers share them out."""
    seen: dict[int, tuple[int, dict]] = {}
    deadline = time.monotonic() + timeout_s
    count = 0
    while count < min_requests or len(seen) < API_WORKERS:
        response = requests.get(stack.url + "/readyz", timeout=10)
        body = response.json()
        seen[body["worker_pid"]] = (response.status_code, body)
        count += 1
        if time.monotonic() > deadline:
            raise AssertionError(f"saw only workers {sorted(seen)} in {timeout_s} s")
    return seen


def pointer(stack: LiveStack) -> dict:
    return json.loads((stack.store_dir / "current.json").read_text())


def log_offset(stack: LiveStack, name: str) -> int:
    return len(stack.native.log_text(name))


def log_since(stack: LiveStack, name: str, offset: int) -> str:
    return stack.native.log_text(name)[offset:]


def activate(stack: LiveStack, version: str, session: requests.Session | None = None) -> requests.Response:
    http = session or stack.session
    return http.post(f"{stack.url}/models/{version}/activate", headers=stack.admin(), timeout=30)


def activate_and_wait(stack: LiveStack, version: str, session: requests.Session | None = None) -> requests.Response:
    """Activate; when the control worker could not finish within the request (202), wait for its job."""
    response = activate(stack, version, session)
    assert response.status_code in (200, 202), response.text
    if response.status_code == 202:
        job = stack.wait_job(response.json()["job_id"], timeout_s=60)
        assert job["status"] == "finished", job
    return response


def retrain(stack: LiveStack, **body: Any) -> requests.Response:
    return stack.post("/retrain", json={"dataset": "iris", **body}, headers=stack.admin())


def running(stack: LiveStack, name: str) -> bool:
    proc = stack.native.processes.get(name)
    return proc is not None and proc.popen.poll() is None


def ensure_running(stack: LiveStack) -> list[str]:
    """Restart (in dependency order) any service of the session stack that is not running."""
    restarted = []
    for name in SERVICES:
        if not running(stack, name):
            stack.native.stop_service(name, timeout_s=5)  # reap what is left of it, if anything
            stack.native.start_service(name)
            restarted.append(name)
    return restarted


def iris_versions(stack: LiveStack) -> list[str]:
    """Stored versions that answer the book's iris request, oldest first."""
    return [
        m["version"]
        for m in stack.get("/models").json()["versions"]
        if m.get("dataset") == "iris" and [f["name"] for f in m.get("features", [])] == list(BOOK_REQUEST)
    ]


@pytest.fixture(scope="module")
def leave_the_stack_healthy(stack: LiveStack) -> Iterator[str]:
    """Yields the iris version serving when the module starts (the bootstrap one unless another
    iris model is current); afterwards, whatever happened: every service running, Redis up,
    and that version current again."""
    current = pointer(stack)["version"]
    start_version = current if current in iris_versions(stack) else stack.bootstrap_version
    if current != start_version:
        activate_and_wait(stack, start_version)
    stack.wait_all_workers_serve(start_version, timeout_s=20)
    yield start_version
    restarted = ensure_running(stack)
    if restarted:
        say(f"teardown restarted {restarted}")
    wait_for(lambda: stack.get("/readyz").json()["queue"] == "ok", 30, what="the queue back")
    if pointer(stack)["version"] != start_version:
        activate_and_wait(stack, start_version)
    stack.wait_all_workers_serve(start_version, timeout_s=20)


# Every test on the shared session stack; the disk-full test runs its own.
on_the_session_stack = pytest.mark.usefixtures("leave_the_stack_healthy")


@pytest.fixture(scope="module")
def two_versions(stack: LiveStack, leave_the_stack_healthy: str) -> tuple[str, str]:
    """The module's iris version and a second stored iris version (trained, never promoted, if none exists)."""
    first = leave_the_stack_healthy
    others = [v for v in iris_versions(stack) if v != first]
    if others:
        return first, others[-1]
    response = retrain(stack, promote="never", **SMALL)
    assert response.status_code == 202, response.text
    job = stack.wait_job(response.json()["job_id"], timeout_s=180)
    assert job["status"] == "finished", (job["status"], job["error"])
    return first, job["result"]["version"]


# --- 5. a bad artifact made current by hand ------------------------------------------
class TouchOnLoad:
    """Unpickling this creates ``path``: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _sign(data: bytes, key: str) -> str:
    return hmac.new(key.encode(), data, hashlib.sha256).hexdigest()


def _write_version_by_hand(store_dir: Path, version: str, artifact: bytes, meta: dict) -> Path:
    """Like an operator: write a version beside the store, then rename it into versions/."""
    tmp = store_dir / "versions" / f".tmp-by-hand-{version}"
    tmp.mkdir()
    (tmp / "model.joblib").write_bytes(artifact)
    (tmp / "meta.json").write_text(json.dumps({**meta, "version": version}))
    final = store_dir / "versions" / version
    os.rename(tmp, final)
    return final


def _replace_pointer(store_dir: Path, body: bytes) -> None:
    tmp = store_dir / ".tmp-pointer-by-hand"
    tmp.write_bytes(body)
    os.replace(tmp, store_dir / "current.json")


@on_the_session_stack
@pytest.mark.parametrize(
    "variant",
    ["truncated", "wrong-pointer-sha256", "missing-signature", "forged-signature"],
)
def test_bad_artifact_made_current_by_hand_is_refused_before_unpickling(
    stack: LiveStack, tmp_path: Path, variant: str
) -> None:
    good_pointer_bytes = (stack.store_dir / "current.json").read_bytes()
    good = json.loads(good_pointer_bytes)
    good_version = good["version"]
    assert set(stack.worker_versions().values()) == {good_version}
    good_meta = json.loads((stack.store_dir / "versions" / good_version / "meta.json").read_text())

    marker = tmp_path / "unpickled-marker"
    if variant == "truncated":
        # A real version's model, truncated to half, in a stream that touches the marker
        # as soon as unpickling starts; meta and pointer keep the real version's sha256.
        import joblib

        model = joblib.load(stack.store_dir / "versions" / good_version / "model.joblib")

        def planted(path: Path) -> bytes:
            # Protocol 2: no frames, so an unpickler runs each opcode as it reads it (with
            # protocol 4+ a cut-off frame fails before anything in it runs).
            full = pickle.dumps((TouchOnLoad(path), model), protocol=2)
            return full[: len(full) // 2]
    else:

        def planted(path: Path) -> bytes:
            return pickle.dumps(TouchOnLoad(path), protocol=4)

    # The payload is live: unpickling the same construction here (aimed at another file)
    # creates that file, even where the rest of the stream is cut off.
    probe = tmp_path / "probe-marker"
    try:
        pickle.loads(planted(probe))
    except Exception:  # noqa: BLE001 - the truncated stream ends early, after the touch
        pass
    assert probe.exists()
    evil = planted(marker)

    bad = f"00000000T000000Z-fault-{variant}"
    artifact = evil
    if variant == "truncated":
        meta = dict(good_meta)
        pointer_sha = good_meta["sha256"]
        expect = "sha256"
    else:
        real_sha = hashlib.sha256(evil).hexdigest()
        meta = {**good_meta, "sha256": real_sha}
        if variant == "wrong-pointer-sha256":
            # Everything else is valid, even the signature: only the pointer's hash is wrong.
            meta["signature"] = _sign(evil, SIGNING_KEY)
            pointer_sha = hashlib.sha256(b"not these bytes").hexdigest()
            expect = "sha256"
        elif variant == "missing-signature":
            meta.pop("signature", None)
            pointer_sha = real_sha
            expect = "signature"
        else:
            meta["signature"] = _sign(evil, "an attacker's key")
            pointer_sha = real_sha
            expect = "signature"

    api_log = log_offset(stack, "api")
    target = _write_version_by_hand(stack.store_dir, bad, artifact, meta)
    planted = time.monotonic()
    try:
        _replace_pointer(
            stack.store_dir, json.dumps({"version": bad, "sha256": pointer_sha, "previous": good_version}).encode()
        )

        def refused_everywhere() -> dict | None:
            states = readyz_by_worker(stack)
            ok = all(
                status == 200
                and body["model_version"] == good_version
                and (body["last_load_error"] or {}).get("version") == bad
                for status, body in states.values()
            )
            return states if ok else None

        states = wait_for(refused_everywhere, timeout_s=15, what=f"every worker refusing {bad}")
        refused_s = time.monotonic() - planted
        for _, body in states.values():
            assert expect in body["last_load_error"]["message"], body["last_load_error"]
        for _ in range(10):
            response = stack.predict_book()
            assert response.status_code == 200, response.text
            assert response.headers["X-Model-Version"] == good_version
        logged = wait_for(
            lambda: log_since(stack, "api", api_log).count(f"refused model iris version {bad}") >= API_WORKERS,
            timeout_s=10,
            what="the refusal in the api log",
        )
        assert logged
        assert not marker.exists(), "the planted pickle was unpickled"
        say(
            f"bad artifact [{variant}]: refused by all {len(states)} workers {refused_s:.2f} s after the pointer "
            f"moved; message: {next(iter(states.values()))[1]['last_load_error']['message']!r}"
        )
    finally:
        tmp = stack.store_dir / ".tmp-pointer-by-hand"
        tmp.write_bytes(good_pointer_bytes)
        os.replace(tmp, stack.store_dir / "current.json")

    def cleared() -> bool:
        return all(
            status == 200 and body["last_load_error"] is None and body["model_version"] == good_version
            for status, body in readyz_by_worker(stack).values()
        )

    wait_for(cleared, timeout_s=15, what="the load error cleared on every worker")
    shutil.rmtree(target)
    assert not marker.exists(), "the planted pickle was unpickled"
    assert stack.predict_book().headers["X-Model-Version"] == good_version


# --- 4. a Gunicorn worker killed under load -----------------------------------------
@on_the_session_stack
def test_a_gunicorn_worker_killed_under_load_is_replaced(stack: LiveStack) -> None:
    master = stack.native.processes["api"].popen.pid
    before = readyz_by_worker(stack)
    old_pids = set(before)
    assert old_pids <= descendants(master), (old_pids, descendants(master))
    current = pointer(stack)["version"]
    clients = 8
    with PredictLoad(stack.url, clients) as load:
        wait_for(lambda: load.count() >= 100, timeout_s=30, what="load running")
        victim = min(old_pids)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not alive(victim), timeout_s=10, what="the killed worker gone")

        def replacement() -> int | None:
            body = requests.get(stack.url + "/readyz", timeout=10).json()
            return body["worker_pid"] if body["worker_pid"] not in old_pids else None

        new_pid = wait_for(replacement, timeout_s=60, interval_s=0.05, what="a respawned worker answering")
        respawn_s = time.monotonic() - killed_at
        answered = load.count()
        wait_for(lambda: load.count() >= answered + 100, timeout_s=30, what="load after the respawn")
    say(f"gunicorn worker {victim} SIGKILLed under {clients} clients: {load.summary()}")
    say(f"replacement {new_pid} answered /readyz {respawn_s:.2f} s after the kill")
    for sample in load.failures():
        say(f"  failed request: status {sample.status}: {sample.detail}")

    assert len(load.failures()) <= clients, load.summary()
    assert {s.version for s in load.snapshot() if s.ok} == {current}
    assert new_pid in descendants(master)
    after = readyz_by_worker(stack)
    assert victim not in after
    assert new_pid in after and len(after) == API_WORKERS, after
    status, body = after[new_pid]
    assert status == 200
    assert body["model_version"] == pointer(stack)["version"] == current
    assert body["last_load_error"] is None


# --- 3. Redis stopped and started again ----------------------------------------------
def _timed(call: Any) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


@on_the_session_stack
def test_redis_outage_fails_fast_and_everything_recovers_by_itself(stack: LiveStack) -> None:
    native = stack.native
    earlier = stack.get("/jobs/bootstrap")
    assert earlier.status_code == 200 and earlier.json()["status"] == "finished", earlier.text
    workers_before = {name: native.processes[name].popen.pid for name in ("worker", "worker-control")}
    others_before = {name: native.processes[name].popen.pid for name in ("api", "nginx")}
    served = pointer(stack)["version"]
    logs = {name: log_offset(stack, name) for name in workers_before}
    measured: dict[str, float] = {}

    try:
        with PredictLoad(stack.url, 4, pause_s=0.05) as load:
            native.stop_service("redis")
            down_at = time.monotonic()

            retrain_503, measured["POST /retrain"] = _timed(lambda: retrain(stack, promote="never", **SMALL))
            job_503, measured["GET /jobs/<id>"] = _timed(lambda: stack.get("/jobs/bootstrap"))
            ready, measured["GET /readyz"] = _timed(lambda: stack.get("/readyz"))
            for response in (retrain_503, job_503):
                assert response.status_code == 503, response.text
                assert response.headers["Content-Type"].startswith("application/json")
                assert response.json()["error"]["code"] == "queue_unavailable"
                assert int(response.headers["Retry-After"]) > 0
            assert ready.status_code == 200, ready.text  # a model is loaded: still ready
            for status, body in readyz_by_worker(stack, min_requests=4, timeout_s=60).values():
                assert status == 200 and body["queue"] == "unavailable", body

            # Hold the outage until both RQ workers are in their reconnect back-off (RQ waits
            # 1, 2, 4 ... s between attempts: the 4 s wait comes after ~3 s of failed retries),
            # or until one of them has died of it.
            def backing_off_or_dead() -> bool:
                return all(
                    not running(stack, name) or "retrying in 4 seconds" in log_since(stack, name, logs[name])
                    for name in workers_before
                )

            wait_for(backing_off_or_dead, timeout_s=30, what="both RQ workers retrying Redis")
            outage_s = time.monotonic() - down_at
            dead = {name: native.processes[name].popen.poll() for name in workers_before if not running(stack, name)}
            retries = {
                name: log_since(stack, name, logs[name]).count("could not connect to Redis") for name in workers_before
            }
            say(f"redis down {outage_s:.1f} s: RQ workers logged {retries} reconnect failures; dead: {dead}")
            assert not dead, f"RQ workers died while Redis was down (exit codes {dead})"

            native.start_service("redis")
            up_at = time.monotonic()
            wait_for(
                lambda: all(b["queue"] == "ok" for _, b in readyz_by_worker(stack, min_requests=6).values()),
                timeout_s=30,
                what="/readyz queue ok on every worker",
            )
            measured["queue ok on every API worker after restart"] = time.monotonic() - up_at
            again = stack.get("/jobs/bootstrap")
            assert again.status_code == 200, again.text
            assert again.json()["status"] == "finished"
            assert again.json()["result"]["version"] == earlier.json()["result"]["version"]

            # The refused POST /retrain enqueued nothing.
            assert stack.redis().llen("rq:queue:training") == 0
            # The control worker reconnected by itself: an activation (of what is served) completes.
            response = activate_and_wait(stack, served)
            measured["activation done after restart"] = time.monotonic() - up_at
            load.stop()  # the retrain gets the CPU to itself
            # The training worker reconnected by itself: a new small retrain finishes.
            response = retrain(stack, promote="never", **RECOVERY)
            assert response.status_code == 202, response.text
            job = stack.wait_job(response.json()["job_id"], timeout_s=180)
            measured["retrain finished after restart"] = time.monotonic() - up_at
    finally:
        if not running(stack, "redis"):
            native.stop_service("redis")
            native.start_service("redis")

    say(f"redis outage ({outage_s:.1f} s) and recovery, predictions throughout: {load.summary()}")
    for what, seconds in measured.items():
        say(f"  {what}: {seconds:.2f} s")
    assert job["status"] == "finished", (job["status"], job["error"])
    assert load.failures() == [], load.failures()[:5]
    assert {s.version for s in load.snapshot()} == {served}
    assert measured["POST /retrain"] < QUEUE_503_DEADLINE_S, measured
    assert measured["GET /jobs/<id>"] < QUEUE_503_DEADLINE_S, measured
    # Nothing else was restarted: the same processes serve as before the outage.
    assert {n: native.processes[n].popen.pid for n in workers_before} == workers_before
    assert {n: native.processes[n].popen.pid for n in others_before} == others_before
    assert pointer(stack)["version"] == served


# --- 1. versions swapped back and forth under load -----------------------------------
@on_the_session_stack
def test_no_failed_request_while_versions_swap_every_2s_under_32_clients(
    stack: LiveStack, two_versions: tuple[str, str]
) -> None:
    first, second = two_versions
    if pointer(stack)["version"] != first:
        activate_and_wait(stack, first)
    stack.wait_all_workers_serve(first, timeout_s=10)
    load_s, swap_every_s, clients = 30.0, 2.0, 32
    swaps: list[tuple[str, float, float]] = []  # (version, sent, done)
    with requests.Session() as admin, PredictLoad(stack.url, clients) as load:
        begin = load.started_at
        slot = 0
        # Swaps at 0, 2, ... 26 s: an even count, so the last one goes back to the first version,
        # with a few seconds of load left to watch every worker answer it.
        while slot * swap_every_s <= load_s - 4:
            target = second if slot % 2 == 0 else first
            time.sleep(max(0.0, begin + slot * swap_every_s - time.monotonic()))  # pacing only
            sent = time.monotonic()
            activate_and_wait(stack, target, session=admin)
            swaps.append((target, sent, time.monotonic()))
            slot += 1
        final, _, final_done = swaps[-1]
        time.sleep(max(0.0, begin + load_s - time.monotonic(), final_done + 3.0 - time.monotonic()))  # pacing
    samples = load.snapshot()
    say(f"swap under load: {len(swaps)} swaps, {clients} clients: {load.summary()}")

    # How long after each swap completed did a request *started* after it still get the old version?
    # (Only requests started before the next swap was sent: after that, either version is right.)
    stale_after: list[float] = []
    for i, (target, _, done) in enumerate(swaps):
        until = swaps[i + 1][1] if i + 1 < len(swaps) else float("inf")
        stale = [s.start - done for s in samples if s.ok and done <= s.start < until and s.version != target]
        stale_after.append(max(stale, default=0.0))
    final_stale = stale_after[-1]
    watched = [s for s in samples if s.start >= final_done + SWAP_DEADLINE_S]
    say(
        f"  activation latency max {max(d - s for _, s, d in swaps):.2f} s; old version still answered up to "
        f"{max(stale_after):.2f} s after a swap (final swap: {final_stale:.2f} s); "
        f"{len(watched)} requests watched after the final deadline"
    )
    for sample in load.failures()[:5]:
        say(f"  failed request: status {sample.status}: {sample.detail}")

    assert len(samples) > 300, load.summary()
    assert load.failures() == [], load.summary()
    served = Counter(s.version for s in samples)
    assert set(served) == {first, second}, served  # only the two, and both really served
    assert final == first
    assert watched, "no request was watched after the final swap's deadline"
    assert final_stale <= SWAP_DEADLINE_S, stale_after
    assert {s.version for s in watched} == {final}
    assert stack.wait_all_workers_serve(final, timeout_s=10) <= SWAP_DEADLINE_S


# --- 6. the disk full while the trainer writes ---------------------------------------
FREE_BYTES = 4096  # one page: no version (artifact + meta.json, a page each at least) fits


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_disk_full_while_the_trainer_writes(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    models = data_dir / "models"
    models.mkdir(parents=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(models)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the model store (this test needs root): {mount.stderr.strip()}")
    native: NativeStack | None = None
    try:
        # Fill the store up to one free page: the trainer's write is what runs out of space.
        ballast = models / "ballast"
        ballast.write_bytes(b"\0" * (_free_bytes(models) - FREE_BYTES))
        assert _free_bytes(models) == FREE_BYTES
        native = NativeStack(
            data_dir=data_dir,
            gateway_port=free_port(),
            env={
                "API_KEY": API_KEY,
                "MODEL_SIGNING_KEY": SIGNING_KEY,
                "BOOTSTRAP_ON_START": "false",
                "API_WORKERS": "1",
                "TPOT_MAX_TIME_MINS": "0.25",
                "TPOT_GENERATIONS": "2",
                "TPOT_POPULATION_SIZE": "6",
                "TPOT_CV": "3",
            },
        )
        started = time.monotonic()
        native.start(services=SERVICES)
        say(f"disk-full stack started in {time.monotonic() - started:.1f} s")
        url = native.gateway_url
        admin = {"Authorization": f"Bearer {API_KEY}"}
        response = requests.post(url + "/retrain", json={"dataset": "iris", **RECOVERY}, headers=admin, timeout=30)
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        posted = time.monotonic()

        def ended() -> dict | None:
            body = requests.get(f"{url}/jobs/{job_id}", timeout=10).json()
            return body if body["status"] in ("finished", "failed", "canceled") else None

        job = wait_for(ended, timeout_s=180, interval_s=0.25, what="the job on a full disk")
        say(f"disk full: job {job['status']} {time.monotonic() - posted:.1f} s after the POST: {job['error']!r}")
        assert job["status"] == "failed", job
        assert any(word in (job["error"] or "").lower() for word in ("no space", "disk")), job["error"]
        # Nothing half-written became current, or is listed, or is left on the volume.
        store = models / "models" / "iris"  # the default model's store
        assert not (store / "current.json").exists()
        listing = requests.get(url + "/models", timeout=10).json()
        assert (listing["current"], listing["versions"]) == (None, []), listing
        leftovers = [p.name for p in store.iterdir() if p.name.startswith(".tmp-")] if store.is_dir() else []
        if (store / "versions").is_dir():
            leftovers += [p.name for p in (store / "versions").iterdir()]
        assert leftovers == []
        assert _free_bytes(models) == FREE_BYTES  # the partial write was removed
        ready = requests.get(url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["model_loaded"] is False, ready.text
        predict = requests.post(url + "/predict", json=BOOK_REQUEST, timeout=10)
        assert predict.status_code == 503 and predict.json()["error"]["code"] == "model_not_ready"
        assert native.processes["worker"].popen.poll() is None  # the worker survived its failed job
    finally:
        if native is not None:
            native.stop()
        if subprocess.run(["umount", str(models)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(models)], capture_output=True)
