"""Before the training worker starts: make sure a first model will exist.

The book's rule: if no trained model exists, train one first. With an empty
model volume this enqueues one iris training of the default model (MODEL_NAME),
under a fixed job id so that restarts do not pile up duplicates. Before that it
moves a single-model volume's store under the default name (the layout before
named models; :meth:`tpotserve.registry.ModelRegistry.migrate_legacy`) and
clears every model's temp leftovers of a writer that died mid-write.
"""

from __future__ import annotations

import logging
import sys
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry

from tpotserve import jobs, logs
from tpotserve.datasets import DEFAULT_DATASET, DatasetStore
from tpotserve.schema import parse_retrain_request
from tpotserve.settings import Settings, load_settings
from tpotserve.registry import ModelRegistry
from tpotserve.training import plan_training

log = logging.getLogger("tpotserve_trainer.bootstrap")

REDIS_WAIT_S = 30.0
STALE_TEMP_S = 60.0
BOOTSTRAP_RETRIES = 2


def ensure_first_model(settings: Settings) -> str | None:
    """Enqueue the bootstrap training if no model is current; returns the job id, if any."""
    registry = ModelRegistry.from_settings(settings)
    registry.migrate_legacy()
    for model in registry.names():
        for name in registry.store(model).remove_stale_temp(older_than_s=STALE_TEMP_S):
            log.warning("removed temp leftover %s of model %s", name, model)
    store = registry.store()
    if not settings.bootstrap_on_start or store.read_pointer() is not None:
        return None

    redis = _connect(settings)
    queue = Queue(jobs.TRAINING_QUEUE, connection=redis)
    try:
        existing = Job.fetch(jobs.BOOTSTRAP_JOB_ID, connection=redis)
    except NoSuchJobError:
        existing = None
    if existing is not None:
        status = jobs.rq_status(existing)
        if status == "started":
            # A dead worker's job is failed (and, with retries left, requeued) by
            # RQ's cleanup once its heartbeat expired; a live one is left alone.
            StartedJobRegistry(queue=queue).cleanup()
            status = jobs.rq_status(existing)
        if status in ("queued", "started", "scheduled", "deferred"):
            log.info("bootstrap training already %s", status)
            return existing.id
        existing.delete()  # ended without a model: run it again
    payload = plan_training(
        parse_retrain_request({"dataset": DEFAULT_DATASET}), settings, DatasetStore.from_settings(settings), reason="bootstrap"
    )
    job = queue.enqueue(
        jobs.RETRAIN_FUNC,
        job_id=jobs.BOOTSTRAP_JOB_ID,
        # Without a first model nothing is served: a failed bootstrap is retried.
        # (no interval: a delayed retry would need an RQ scheduler)
        retry=Retry(max=BOOTSTRAP_RETRIES),
        **jobs.training_enqueue_args(payload, settings.job_timeout_margin_s, kind="bootstrap"),
    )
    log.info("no model yet: enqueued the bootstrap training as job %s", job.id)
    return job.id


def _connect(settings: Settings) -> Redis:
    redis = jobs.redis_client(settings, socket_timeout_s=max(settings.redis_timeout_s, 5.0))
    deadline = time.monotonic() + REDIS_WAIT_S
    while True:
        try:
            redis.ping()
            return redis
        except RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    logs.configure("worker")
    try:
        ensure_first_model(load_settings())
    except RuntimeError as exc:  # a missing signing key: say so plainly, do not start
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
