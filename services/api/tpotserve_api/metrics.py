"""Prometheus metrics: ``GET /metrics`` in the text exposition format.

Gunicorn runs several worker processes and each counts what it serves. With
``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn_config.py sets it in the master,
so every worker has it before it imports this module), prometheus-client
keeps each process's values in a file there, and whichever worker answers a
scrape sums the files of all of them (``MultiProcessCollector``). Without it
(unit tests, a lone process) the values simply live in this process.

The trainer's side is read, not pushed: RQ's work-horses are forked
processes in another container. At each scrape, one worker reads the job
counts from RQ's registries in Redis (:class:`QueueCollector`) and each
stored version's training figures from its meta.json on the model volume
(:class:`StoreCollector`). These are read once per scrape, never summed
across workers. docs/operations.md explains the choice.
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job
from rq.queue import Queue
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from tpotserve import jobs
from tpotserve.registry import ModelRegistry

# The classic text format (0.0.4): what every Prometheus version reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
UNMATCHED_ROUTE = "(unmatched)"
"""The route label of requests no route matched (404, 405): never the raw path, so a
scanner cannot create one series per URL it tries."""
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# --- per worker process, summed across workers in multiprocess mode -------------
REQUESTS = Counter(
    "tpotserve_http_requests",
    "HTTP requests the API answered, by method, route template and status code.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "tpotserve_http_request_duration_seconds",
    "Time the API took to answer a request (in Gunicorn, not counting nginx), by method, route and status.",
    ["method", "route", "status"],
    # A /predict takes a few milliseconds; Gunicorn's worker timeout is 60 s.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
PREDICTIONS = Counter(
    "tpotserve_predictions",
    "Rows predicted, by model name, model version and predicted class (empty for a regression model).",
    ["model", "model_version", "predicted_class"],
)
MODEL_LOAD_SECONDS = Histogram(
    "tpotserve_model_load_seconds",
    "Time an API worker took to load a model version it then served: hash and signature check, "
    "unpickling, smoke prediction; by model name.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
MODEL_LOAD_FAILURES = Counter(
    "tpotserve_model_load_failures",
    "Model versions an API worker refused to serve (bad hash or signature, unpickling or smoke "
    "prediction failed); it kept serving the version it had. By model name.",
    ["model"],
)
MODEL_SERVING = Gauge(
    "tpotserve_model_serving",
    "1 for each model version a live API worker serves, 0 for a version one served before; "
    "by model name and version.",
    ["model", "version"],
    # The largest value over live workers: during a swap both versions are 1; a dead
    # worker's file is dropped (gunicorn_config.child_exit), so it cannot pin an old version.
    multiprocess_mode="livemax",
)
COMPILED_FALLBACKS = Counter(
    "tpotserve_compiled_fallbacks",
    "Model versions an API worker loaded without its compiled engine, by model name and reason: "
    "not_compiled (published before compiled inference), not_compilable (the trainer recorded why), "
    "rejected (hash or signature), load_failed, verification_failed, slower, disabled.",
    ["model", "reason"],
)
ENGINE_REQUESTS = Counter(
    "tpotserve_inference_engine_requests",
    "Inference requests answered, by model name and engine (onnxruntime: the verified compiled form; "
    "scikit-learn: the pipeline's own path).",
    ["model", "engine"],
)
API_WORKERS = Gauge(
    "tpotserve_api_workers",
    "Live API worker processes (Gunicorn workers) that built the app.",
    multiprocess_mode="livesum",
)


def multiprocess_dir() -> str | None:
    """The directory the workers share their values in, when running under Gunicorn."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# --- recording -------------------------------------------------------------------
def record_predictions(model: str, model_version: str, predictions: Sequence[Any], is_classifier: bool) -> None:
    """Count one answered prediction request: each row under its predicted class."""
    if not is_classifier:
        PREDICTIONS.labels(model, model_version, "").inc(len(predictions))
        return
    for predicted_class, count in Tally(str(p) for p in predictions).items():
        PREDICTIONS.labels(model, model_version, predicted_class).inc(count)


def record_model_loaded(model: str, previous_version: str | None, version: str, seconds: float) -> None:
    """A worker swapped ``version`` of ``model`` in (after ``previous_version``, if any)."""
    MODEL_LOAD_SECONDS.labels(model).observe(seconds)
    if previous_version is not None and previous_version != version:
        MODEL_SERVING.labels(model, previous_version).set(0)
    MODEL_SERVING.labels(model, version).set(1)


def record_compiled_fallback(model: str, reason: str) -> None:
    """A worker loaded a version of ``model`` that it serves without its compiled engine."""
    COMPILED_FALLBACKS.labels(model, reason).inc()


def record_engine(model: str, engine: str) -> None:
    """One inference request of ``model`` answered by ``engine``."""
    ENGINE_REQUESTS.labels(model, engine).inc()


def record_model_load_failed(model: str) -> None:
    """A worker refused a version of ``model`` and kept the one it had."""
    MODEL_LOAD_FAILURES.labels(model).inc()


# --- the trainer's side, read at scrape time ----------------------------------------
class ScrapeCollector:
    """Base of the collectors that read each model's figures from Redis at scrape time, from
    the app context (any worker can answer: the figures are shared, not per process)."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def model_names(self) -> list[str]:
        """The store's model names; none while the store is unreadable (a scrape never fails)."""
        try:
            return self.context.registry.names()
        except OSError:
            return []


class QueueCollector:
    """Jobs in RQ's queues and registries, by the status GET /jobs/<id> reports.

    Finished and failed jobs stay in RQ's registries for RESULT_TTL_S /
    FAILURE_TTL_S (7 days), so these are gauges over that window, not
    counters since the beginning of time. A job RQ records as stopped (DELETE
    /jobs/<id> on a running job) counts as canceled, as /jobs says.
    """

    def __init__(
        self, redis: Redis, queues: Iterable[str] = (jobs.TRAINING_QUEUE, jobs.CONTROL_QUEUE)
    ) -> None:
        self.redis = redis
        self.queues = tuple(queues)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "tpotserve_queue_up",
            "1 when Redis answered this scrape; 0 (and no tpotserve_queue_jobs) otherwise.",
        )
        try:
            counts = {name: self._counts(name) for name in self.queues}
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        family = GaugeMetricFamily(
            "tpotserve_queue_jobs",
            "Jobs by queue and status (queued, started, finished, failed, canceled) as RQ's queues and "
            "registries hold them; finished and failed jobs are kept 7 days.",
            labels=["queue", "status"],
        )
        for queue, by_status in counts.items():
            for status, count in by_status.items():
                family.add_metric([queue, status], count)
        yield family

    def _counts(self, name: str) -> dict[str, int]:
        queue = Queue(name, connection=self.redis)
        failed_ids = FailedJobRegistry(queue=queue).get_job_ids(cleanup=False)
        # One round trip for the statuses: the failed registry also holds stopped jobs.
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in failed_ids:
                pipe.hget(Job.key_for(job_id), "status")
            statuses = [s.decode() if isinstance(s, bytes) else s for s in pipe.execute()]
        stopped = sum(1 for status in statuses if status == "stopped")
        return {
            "queued": queue.count,
            # A job has one entry per execution here; count jobs.
            "started": len(set(StartedJobRegistry(queue=queue).get_job_ids(cleanup=False))),
            "finished": FinishedJobRegistry(queue=queue).get_job_count(cleanup=False),
            "failed": len(failed_ids) - stopped,
            "canceled": CanceledJobRegistry(queue=queue).get_job_count(cleanup=False) + stopped,
        }


class StoreCollector:
    """Each stored version's training figures, from its meta.json on the model volume.

    Bounded by MODEL_KEEP per model; a version pruned from the store leaves these metrics.
    """

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        seconds = GaugeMetricFamily(
            "tpotserve_training_duration_seconds",
            "Wall-clock seconds of the training run that produced each stored model version.",
            labels=["model", "version"],
        )
        cv = GaugeMetricFamily(
            "tpotserve_training_cv_score",
            "Best cross-validation score TPOT found in the run that produced each stored version "
            "(higher is better, in the run's scoring).",
            labels=["model", "version", "scoring"],
        )
        holdout = GaugeMetricFamily(
            "tpotserve_training_holdout_score",
            "Each stored version's score on the rows held out of its search (the promotion gate's score).",
            labels=["model", "version", "scoring"],
        )
        try:
            metas = [(name, meta) for name in self.registry.names()
                     for meta in self.registry.store(name).list_versions()]
        except OSError:
            metas = []
        for name, meta in metas:
            version, scoring = str(meta.get("version")), str(meta.get("scoring") or "")
            for family, key, labels in (
                (seconds, "training_seconds", [name, version]),
                (cv, "cv_score", [name, version, scoring]),
                (holdout, "holdout_score", [name, version, scoring]),
            ):
                value = meta.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    family.add_metric(labels, float(value))
        yield from (seconds, cv, holdout)


class _Forward:
    """Another registry's metrics, inside the per-scrape registry (single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


def exposition(models: ModelRegistry, redis: Redis, extra: Sequence[Any] = ()) -> bytes:
    """The whole /metrics body; ``extra``: more collectors read at scrape time."""
    registry = CollectorRegistry()
    path = multiprocess_dir()
    if path:
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(QueueCollector(redis))
    registry.register(StoreCollector(models))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


# --- wiring into the app ----------------------------------------------------------------
def init_app(app: Flask) -> None:
    """Count and time every request; serve GET /metrics."""
    API_WORKERS.set(1)

    @app.before_request
    def _metrics_start() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _metrics_record(response: Response) -> Response:
        method = request.method if request.method in _METHODS else "other"
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        labels = (method, route, str(response.status_code))
        REQUESTS.labels(*labels).inc()
        started = g.get("metrics_started")
        if started is not None:
            REQUEST_SECONDS.labels(*labels).observe(time.perf_counter() - started)
        return response

    def metrics() -> Response:
        # Here, not at the top: the context imports the pool, which imports this module.
        from .context import ctx
        from .automation import AutomationCollector
        from .shadow_routes import ShadowCollector
        from .watch import MonitoringCollector

        context = ctx()
        collectors = [MonitoringCollector(context), AutomationCollector(context), ShadowCollector(context)]
        return Response(exposition(context.registry, context.queue.redis, collectors),
                        content_type=CONTENT_TYPE)

    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics, methods=["GET"])
