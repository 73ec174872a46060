"""Scaling out, on real processes: a Dask cluster for the searches, two API
instances behind one nginx; trainings one at a time through the training queue's
one consumer.

One extra native stack for the whole module (not the session's): redis, a Dask
scheduler and two Dask workers (the venv's `dask` CLI, started and stopped by
process group through native/stack.py), the training worker pointed at the
scheduler, two Gunicorn instances (one worker each) and nginx.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import timezone
from typing import Any

import pytest
import requests
from redis import Redis
from rq import Queue
from rq.job import Job

from native import proc
from native.stack import NativeStack, free_port
from tpotserve import jobs
from tpotserve.datasets import DatasetStore
from tpotserve.schema import parse_retrain_request
from tpotserve.settings import load_settings
from tpotserve.training import plan_training

from .conftest import BOOK_REQUEST, wait_for

API_KEY = "scaling-test-key"
ADMIN = {"Authorization": f"Bearer {API_KEY}"}
# A small search: about 15 s of TPOT on iris.
SMALL = {"max_time_mins": 0.5, "generations": 2, "population_size": 6, "cv": 3}
INSTANCES = ("api", "api-2")
DASK = ("dask-scheduler", "dask-worker", "dask-worker-2")
PUBLISH_TO_SERVE_S = 2.0


class Scaled:
    def __init__(self, native: NativeStack) -> None:
        self.native = native
        self.url = native.gateway_url

    def redis(self) -> Redis:
        return Redis(port=self.native.redis_port)

    def retrain(self, **body: Any) -> requests.Response:
        body = {"dataset": "iris", **SMALL, **body}
        return requests.post(self.url + "/retrain", json=body, headers=ADMIN, timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        return requests.get(f"{self.url}/jobs/{job_id}", timeout=30).json()

    def wait_job(self, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            body = self.job(job_id)
            return body if body["status"] in ("finished", "failed", "canceled") else None

        return wait_for(ended, timeout_s, interval_s=0.25, what=f"job {job_id}")

    def rq_job(self, job_id: str) -> Job:
        return Job.fetch(job_id, connection=self.redis())

    def pointer(self) -> dict[str, Any] | None:
        path = self.native.model_dir / "models" / "iris" / "current.json"
        return json.loads(path.read_text()) if path.exists() else None

    def meta(self, version: str) -> dict[str, Any]:
        return json.loads((self.native.model_dir / "models" / "iris" / "versions" / version / "meta.json").read_text())

    def instance_of(self, worker_pid: int) -> str:
        """Which API instance a Gunicorn worker belongs to: its parent is that instance's master."""
        parent = proc.parent(worker_pid)
        for name in INSTANCES:
            process = self.native.processes.get(name)
            if process is not None and process.popen.pid == parent:
                return name
        return f"unknown (parent {parent})"

    def versions_by_instance(self, requests_n: int = 8) -> dict[str, set[str | None]]:
        """{instance: versions its workers answered} over ``requests_n`` gateway requests."""
        seen: dict[str, set[str | None]] = {}
        for _ in range(requests_n):
            # A new connection per request: nginx picks an upstream per request.
            body = requests.get(self.url + "/readyz", timeout=10).json()
            seen.setdefault(self.instance_of(body["worker_pid"]), set()).add(body["model_version"])
        return seen

    def ensure_cluster(self) -> None:
        """The Dask scheduler and both workers up (a test before may have stopped some)."""
        for name in DASK:
            if name not in self.native.processes:
                self.native.start_service(name)


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scaled]:
    env = {
        "API_KEY": API_KEY,
        "MODEL_SIGNING_KEY": "scaling-signing-key",
        "API_WORKERS": "1",
        "MODEL_POLL_INTERVAL_S": "0.5",
        "RETRAIN_RATE_LIMIT": "600r/m",
        "RETRAIN_RATE_BURST": "60",
        "TPOT_MAX_TIME_MINS": "0.3",
        "TPOT_GENERATIONS": "2",
        "TPOT_POPULATION_SIZE": "6",
        "TPOT_CV": "3",
    }
    native = NativeStack(
        data_dir=tmp_path_factory.mktemp("scaled"),
        gateway_port=free_port(),
        env=env,
        api_instances=2,
        dask_workers=2,
    )
    try:
        native.start(services=("redis", *DASK, "worker", *INSTANCES, "nginx"))
        stack = Scaled(native)
        wait_for(stack.pointer, 240, interval_s=0.5, what="the bootstrap model")
        yield stack
    finally:
        native.stop()


def _wait_all_instances_serve(stack: Scaled, version: str, timeout_s: float) -> dict[str, set[str | None]]:
    def all_switched() -> dict[str, set[str | None]] | None:
        seen = stack.versions_by_instance()
        return seen if set(seen) == set(INSTANCES) and all(v == {version} for v in seen.values()) else None

    return wait_for(all_switched, timeout_s, interval_s=0.02, what=f"both API instances serving {version}")


def test_retrain_on_the_dask_cluster_publishes_to_every_api_instance(scaled: Scaled) -> None:
    scaled.ensure_cluster()
    before = scaled.pointer()
    response = scaled.retrain(promote="always")
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    # The moment current.json names the new version, both instances have 2 s to serve it.
    published = wait_for(
        lambda: (p := scaled.pointer()) and p["version"] != before["version"] and p,
        180, interval_s=0.02, what="a new current.json",
    )
    published_at = time.monotonic()
    _wait_all_instances_serve(scaled, published["version"], PUBLISH_TO_SERVE_S)
    assert time.monotonic() - published_at <= PUBLISH_TO_SERVE_S

    job = scaled.wait_job(job_id)
    assert job["status"] == "finished", job
    result = job["result"]
    assert result["version"] == published["version"] and result["published"] is True
    where = {"mode": "dask", "scheduler": scaled.native.dask_scheduler_address, "workers": 2, "threads": 2}
    assert where.items() <= result["compute"].items(), result["compute"]
    assert where.items() <= scaled.meta(result["version"])["compute"].items()
    assert job["progress"]["compute"]["mode"] == "dask"

    # The pipelines really were evaluated by the cluster's workers.
    from distributed import Client

    with Client(scaled.native.dask_scheduler_address, timeout="5s", set_as_default=False) as client:
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "eval_objective_list" in prefixes, prefixes

    # nginx spreads requests over both instances, and the book's request answers from either.
    seen = scaled.versions_by_instance(requests_n=12)
    assert set(seen) == set(INSTANCES), seen
    answer = requests.post(scaled.url + "/predict", json=BOOK_REQUEST, timeout=10)
    assert answer.status_code == 200 and answer.json()["model_version"] == published["version"]


def test_an_api_instance_that_goes_away_and_comes_back(scaled: Scaled) -> None:
    served = scaled.pointer()["version"]
    scaled.native.stop_service("api-2")
    try:
        # nginx retries a refused connection on the other instance: no client sees it.
        statuses = [requests.post(scaled.url + "/predict", json=BOOK_REQUEST, timeout=10).status_code
                    for _ in range(20)]
        assert statuses == [200] * 20, statuses
        assert set(scaled.versions_by_instance()) == {"api"}
    finally:
        scaled.native.start_service("api-2")
    # Back in rotation once nginx retries it (its fail_timeout, 10 s), serving the current version.
    _wait_all_instances_serve(scaled, served, timeout_s=30)


def test_a_dask_worker_killed_mid_run_never_hangs_the_job(scaled: Scaled) -> None:
    scaled.ensure_cluster()
    before = scaled.pointer()
    response = scaled.retrain(promote="always", generations=3, max_time_mins=0.3)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    # After the first generation: the second one's pipelines are on both workers now.
    wait_for(lambda: ((scaled.job(job_id).get("progress") or {}).get("generation") or 0) >= 1,
             120, interval_s=0.1, what="the first generation")
    killed_at = time.monotonic()
    scaled.native.stop_service("dask-worker-2", sig=signal.SIGKILL)

    job = scaled.wait_job(job_id, timeout_s=120)
    elapsed = time.monotonic() - killed_at
    rq_timeout = scaled.rq_job(job_id).timeout
    assert elapsed < rq_timeout, f"{elapsed:.0f} s after the kill, past the job timeout {rq_timeout} s"
    if job["status"] == "finished":
        # Dask rescheduled the lost worker's tasks (the data travels inside them).
        compute = job["result"]["compute"]
        assert compute["workers"] == 2 and compute["workers_at_end"] == 1, compute
        assert job["result"]["published"] is True
    else:
        assert job["status"] == "failed" and job["error"], job
        assert "Traceback" not in job["error"]
        assert scaled.pointer() == before, "a failed run must leave the served model alone"


def test_trainings_run_one_at_a_time_in_the_order_queued(scaled: Scaled) -> None:
    scaled.ensure_cluster()
    first = scaled.retrain()
    assert first.status_code == 202, first.text
    first_id = first.json()["job_id"]
    wait_for(lambda: scaled.job(first_id)["status"] == "started", 60, what="the first training started")

    refused = scaled.retrain()
    assert refused.status_code == 409 and refused.json()["error"]["job_id"] == first_id, refused.text
    queued = scaled.retrain(queue=True)
    assert queued.status_code == 202 and queued.json()["status"] == "queued", queued.text
    queued_id = queued.json()["job_id"]

    # A training that bypasses the API's admission (as the bootstrap job does): it waits in
    # the queue like any other, behind the two before it.
    redis = scaled.redis()
    settings = load_settings(dataset_dir=scaled.native.data_dir / "datasets")
    payload = plan_training(parse_retrain_request({"dataset": "iris", **SMALL}), settings,
                            DatasetStore.from_settings(settings))
    direct = Queue(jobs.TRAINING_QUEUE, connection=redis).enqueue(
        jobs.RETRAIN_FUNC, kwargs={"payload": payload.model_dump()},
        job_timeout=jobs.job_timeout(payload, 300), meta={"kind": "retrain", "payload": payload.model_dump()},
    )
    ids = [first_id, queued_id, direct.id]
    assert scaled.job(direct.id)["status"] == "queued"
    assert scaled.job(queued_id)["status"] == "queued"

    ended = {job_id: scaled.wait_job(job_id, timeout_s=240) for job_id in ids}
    assert all(body["status"] == "finished" for body in ended.values()), ended

    # Never two trainings at once, and in the order queued: by RQ's own start and end times.
    rq = [scaled.rq_job(job_id) for job_id in ids]
    for before, after in zip(rq, rq[1:]):
        assert after.started_at >= before.ended_at, [(job.id, job.started_at, job.ended_at) for job in rq]


def test_canceling_a_running_training_lets_the_queued_one_run_at_once(scaled: Scaled) -> None:
    scaled.ensure_cluster()
    running = scaled.retrain(max_time_mins=2, generations=100)
    assert running.status_code == 202, running.text
    running_id = running.json()["job_id"]
    wait_for(lambda: (scaled.job(running_id)["progress"] or {}).get("stage") == "searching",
             60, what="the first training searching")
    queued = scaled.retrain(queue=True, promote="never")
    assert queued.status_code == 202, queued.text
    queued_id = queued.json()["job_id"]

    stop_sent = time.time()
    stopping = requests.delete(f"{scaled.url}/jobs/{running_id}", headers=ADMIN, timeout=10)
    assert stopping.status_code == 202, stopping.text
    assert scaled.wait_job(running_id, timeout_s=30)["status"] == "canceled"
    job = scaled.wait_job(queued_id, timeout_s=120)
    assert job["status"] == "finished", job
    # The worker took the next job as soon as the stopped horse was gone (RQ records no
    # ended_at for a stopped job: measured from the DELETE).
    started = scaled.rq_job(queued_id).started_at
    gap = (started if started.tzinfo else started.replace(tzinfo=timezone.utc)).timestamp() - stop_sent
    assert 0 <= gap < 10, gap


def test_an_unreachable_scheduler_fails_the_job_at_once(scaled: Scaled) -> None:
    for name in reversed(DASK):
        scaled.native.stop_service(name)
    before = scaled.pointer()
    started = time.monotonic()
    response = scaled.retrain(promote="always")
    assert response.status_code == 202, response.text
    job = scaled.wait_job(response.json()["job_id"], timeout_s=60)
    # The connect timeout (5 s) and a work-horse's start, not the search budget or the job timeout.
    assert time.monotonic() - started < 20
    assert job["status"] == "failed", job
    assert "unreachable" in job["error"], job["error"]
    assert scaled.native.dask_scheduler_address in job["error"], job["error"]
    assert "served model is unchanged" in job["error"]
    assert scaled.pointer() == before
    _wait_all_instances_serve(scaled, before["version"], timeout_s=5)
