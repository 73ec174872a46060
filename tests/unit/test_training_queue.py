"""One training at a time, and what keeps the model store consistent, against a real Redis.

The training queue has one consumer (tpotserve.jobs.TRAINING_QUEUE), so what is left to
test is what the API and the trainer do around it: the API's admission (one 202, then
409 unless ``queue``), cancel (queued and just-dequeued jobs), and the store's publish
lock. A real redis-server on a Unix socket (milliseconds to start) and RQ's own
SimpleWorker running the trainer's real job functions; no TPOT is reached.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.registry import CanceledJobRegistry

from tpotserve import jobs
from tpotserve.errors import Conflict
from tpotserve.settings import load_settings
from tpotserve.store import ModelStore
from tpotserve_api.queue import JobQueue

from tests.tools import redis_server
from tests.unit.payloads import training_payload


@pytest.fixture(scope="module")
def redis_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("redis")
    with redis_server(directory, unix_socket=directory / "redis.sock"):
        yield directory / "redis.sock"


@pytest.fixture
def redis(redis_socket: Path) -> Redis:
    connection = Redis(unix_socket_path=str(redis_socket))
    connection.flushall()
    return connection


@pytest.fixture
def job_queue(redis_socket: Path, redis: Redis) -> JobQueue:
    return JobQueue(load_settings(redis_url=f"unix://{redis_socket}"))


def test_a_second_training_is_refused_while_one_is_queued(job_queue: JobQueue) -> None:
    first = job_queue.enqueue_retrain(training_payload())
    with pytest.raises(Conflict) as refused:
        job_queue.enqueue_retrain(training_payload())
    assert refused.value.details["job_id"] == first.id
    assert job_queue.active_training() == {"id": first.id, "status": "queued"}


def test_queue_true_lines_trainings_up_in_order(job_queue: JobQueue) -> None:
    ids = [job_queue.enqueue_retrain(training_payload(), queue_behind=True).id for _ in range(3)]
    # One FIFO queue with one consumer: the order it runs them in.
    assert job_queue.training.get_job_ids() == ids


def test_simultaneous_requests_get_one_training(job_queue: JobQueue) -> None:
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def ask() -> None:
        start.wait()
        try:
            outcomes.append(job_queue.enqueue_retrain(training_payload()).id)
        except Conflict:
            outcomes.append("409")

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes).count("409") == 7, outcomes
    assert job_queue.training.count == 1


def test_canceling_a_queued_training_frees_the_queue(job_queue: JobQueue) -> None:
    job = job_queue.enqueue_retrain(training_payload())
    assert job_queue.cancel(job) == "canceled"
    assert job_queue.describe(job)["status"] == "canceled"
    assert job_queue.active_training() is None
    assert job_queue.enqueue_retrain(training_payload()).id != job.id


def test_a_job_canceled_as_a_worker_takes_it_never_trains(job_queue: JobQueue, redis: Redis,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DELETE /jobs lands after the worker dequeued the job but before RQ marked it started:
    the API sees "queued" and cancels; the worker runs the job all the same; the trainer's
    first step finds it in RQ's canceled registry and ends it before any work."""
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ALLOW_UNSIGNED_MODELS", "true")
    job = job_queue.enqueue_retrain(training_payload())
    queue = Queue(jobs.TRAINING_QUEUE, connection=redis)
    assert queue.pop_job_id() == job.id  # the worker's dequeue
    assert job_queue.cancel(job) == "canceled"
    assert job.id in CanceledJobRegistry(jobs.TRAINING_QUEUE, connection=redis)

    worker = SimpleWorker([queue], connection=redis)
    worker.execute_job(job, queue)  # what the worker does with the job it dequeued

    view = job_queue.describe(job)
    assert jobs.rq_status(job) == "failed"
    assert view["status"] == "canceled", view
    assert "canceled by request" in job_queue.fetch(job.id).meta["error"]  # the trainer's reason
    assert not (tmp_path / "models" / "versions").exists()  # nothing was trained or written


def test_a_job_that_ended_cannot_be_canceled(job_queue: JobQueue, redis: Redis) -> None:
    job = job_queue.enqueue_retrain(training_payload())
    job_queue.cancel(job)
    with pytest.raises(Conflict, match="already ended"):
        job_queue.cancel(job)


# --- the store's publish lock -------------------------------------------------------

def _hold(root: str, held: multiprocessing.Event, release: multiprocessing.Event) -> None:
    with ModelStore(Path(root)).publishing():
        held.set()
        release.wait(30)


@contextmanager
def publisher_holding_the_lock(root: Path) -> Iterator[tuple[multiprocessing.Process, multiprocessing.Event]]:
    """Another process inside ``ModelStore(root).publishing()`` until the event is set (or it is killed)."""
    held, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold, args=(str(root), held, release))
    holder.start()
    try:
        assert held.wait(10)
        yield holder, release
    finally:
        if holder.is_alive():  # a killed holder may have died holding the event's own lock
            release.set()
        holder.join(10)


def test_publishing_excludes_another_process_and_a_second_open(tmp_path: Path) -> None:
    with publisher_holding_the_lock(tmp_path) as (holder, release):
        with pytest.raises(Conflict, match="another publish"):
            with ModelStore(tmp_path).publishing(wait_s=0.3):
                pass
        release.set()
        holder.join(10)
        with ModelStore(tmp_path).publishing(wait_s=5):
            with pytest.raises(Conflict):  # a second open in the same process is excluded too
                with ModelStore(tmp_path).publishing(wait_s=0.1):
                    pass


def test_a_killed_publisher_never_blocks_the_next(tmp_path: Path) -> None:
    with publisher_holding_the_lock(tmp_path) as (holder, _):
        holder.kill()
        holder.join(10)
        started = time.monotonic()
        with ModelStore(tmp_path).publishing(wait_s=5):
            pass
        assert time.monotonic() - started < 1.0
