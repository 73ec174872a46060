"""GET /metrics (tpotserve_api.metrics): what it counts, in one process and across processes.

The app runs in this process (Flask's test client); the queue collector reads a
real redis-server; prometheus-client's multiprocess mode runs in forked child
processes with gunicorn_config's hooks, as Gunicorn's workers and master would.
Real Gunicorn behind nginx: tests/integration/test_metrics.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from tpotserve.model_meta import ModelMeta
from tpotserve.settings import Settings, load_settings
from tpotserve.registry import ModelRegistry
from tpotserve.store import ModelStore
from tpotserve_api import metrics
from tpotserve_api.app import create_app

from tests.prometheus import Samples, parse, value
from tests.tools import redis_server as throwaway_redis

SIGNING_KEY = "test-signing-key"
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once
FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
BOOK = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}
REPO = Path(__file__).resolve().parents[2]


# --- an app over a store with one signed model ----------------------------------------
@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_iris()
    return np.asarray(bunch.data, dtype=float), np.array([str(bunch.target_names[i]) for i in bunch.target])


@pytest.fixture(scope="module")
def classifier(iris) -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(*iris)


def meta_for(model: Any, X: np.ndarray, task: str = "classification", **extra: Any) -> dict:
    """meta.json's content, through the typed model the trainer writes it with."""
    return ModelMeta(**{
        "task": task,
        "dataset": "iris",
        "target": "species",
        "features": [
            {"name": n, "type": "number", "min": float(X[:, i].min()), "max": float(X[:, i].max())}
            for i, n in enumerate(FEATURES)
        ],
        "classes": [str(c) for c in model.classes_] if task == "classification" else None,
        **extra,
    }).to_json()


def publish(store: ModelStore, version: str, model: Any, meta: dict) -> None:
    store.write_version(version, lambda path: joblib.dump(model, path), meta)
    store.set_current(version)


def unique(prefix: str) -> str:
    """A version id no other test in this process used: the metrics are process-wide."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models" / "models" / "iris", SIGNING_KEY.encode())  # the default model's store


def make_app(store: ModelStore):
    settings = load_settings(
        model_dir=store.root.parents[1],
        dataset_dir=store.root.parents[2] / "datasets",
        model_signing_key=SIGNING_KEY,
        redis_url=DEAD_REDIS,
        redis_timeout_s=0.2,
    )
    return create_app(settings, poll=False)


def scrape(client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.get_data(as_text=True))


def test_requests_are_counted_and_timed_by_method_route_and_status(store, classifier, iris) -> None:
    publish(store, unique("req"), classifier, meta_for(classifier, iris[0]))
    client = make_app(store).test_client()
    before = scrape(client)
    for _ in range(3):
        assert client.post("/predict", json=BOOK).status_code == 200
    bad = client.post("/predict", data=b"{not json", content_type="application/json")
    assert bad.status_code == 400
    assert client.get("/no/such/page").status_code == 404
    assert client.open("/predict", method="BREW").status_code == 405
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"method": "POST", "route": "/predict", "status": "200"}
    assert delta("tpotserve_http_requests_total", **ok) == 3
    assert delta("tpotserve_http_request_duration_seconds_count", **ok) == 3
    assert delta("tpotserve_http_request_duration_seconds_bucket", **ok, le="+Inf") == 3
    assert delta("tpotserve_http_request_duration_seconds_sum", **ok) > 0
    assert delta("tpotserve_http_requests_total", method="POST", route="/predict", status="400") == 1
    # Unmatched paths and unknown methods never become labels of their own.
    assert delta("tpotserve_http_requests_total", method="GET", route="(unmatched)", status="404") == 1
    assert delta("tpotserve_http_requests_total", method="other", route="(unmatched)", status="405") == 1
    assert not any("/no/such/page" in str(labels) or "BREW" in str(labels) for _, labels in after)
    # The first scrape is counted by the second one.
    assert delta("tpotserve_http_requests_total", method="GET", route="/metrics", status="200") == 1


def test_predictions_are_counted_by_model_version_and_predicted_class(store, classifier, iris) -> None:
    version = unique("pred")
    publish(store, version, classifier, meta_for(classifier, iris[0]))
    client = make_app(store).test_client()
    rows = [dict(zip(FEATURES, map(float, iris[0][i]))) for i in (0, 1, 60, 120, 130)]
    answer = client.post("/predict", json={"instances": rows}).get_json()
    single = client.post("/predict", json=BOOK).get_json()
    expected: dict[str, int] = {}
    for predicted in [*answer["predictions"], single["Prediction"]]:
        expected[predicted] = expected.get(predicted, 0) + 1
    assert len(expected) >= 2, f"pick rows of more than one class: {expected}"
    samples = scrape(client)
    counted = {
        dict(labels)["predicted_class"]: v
        for (name, labels), v in samples.items()
        if name == "tpotserve_predictions_total" and dict(labels)["model_version"] == version
        and dict(labels)["model"] == "iris"
    }
    assert counted == expected


def test_a_regression_prediction_is_counted_without_a_class(store, iris) -> None:
    X, _ = iris
    regressor = LinearRegression().fit(X[:, :3], X[:, 3])
    version = unique("reg")
    features = [{"name": n, "type": "number", "min": 0.0, "max": 8.0} for n in FEATURES[:3]]
    publish(store, version, regressor, {"task": "regression", "target": "PetalWidth", "features": features,
                                        "classes": None})
    client = make_app(store).test_client()
    rows = [dict(zip(FEATURES[:3], map(float, X[i, :3]))) for i in range(4)]
    assert client.post("/predict", json={"instances": rows}).status_code == 200
    samples = scrape(client)
    assert value(samples, "tpotserve_predictions_total", model="iris", model_version=version, predicted_class="") == 4


def test_model_loads_failures_and_the_served_version(store, classifier, iris) -> None:
    first, second, broken = unique("load"), unique("load"), unique("load")
    publish(store, first, classifier, meta_for(classifier, iris[0]))
    before = parse(metrics.exposition(ModelRegistry(store.root.parents[1], None, "iris"), Redis.from_url(DEAD_REDIS)).decode())
    app = make_app(store)  # loads `first`
    holder = app.extensions["tpotserve"].models.default
    client = app.test_client()
    samples = scrape(client)
    assert value(samples, "tpotserve_model_serving", model="iris", version=first) == 1
    assert value(samples, "tpotserve_model_load_seconds_count", model="iris") - value(
        before, "tpotserve_model_load_seconds_count", model="iris"
    ) == 1
    assert value(samples, "tpotserve_api_workers") >= 1

    publish(store, second, classifier, meta_for(classifier, iris[0]))
    assert holder.refresh()
    samples = scrape(client)
    assert value(samples, "tpotserve_model_serving", model="iris", version=second) == 1
    assert value(samples, "tpotserve_model_serving", model="iris", version=first) == 0, "the old version goes to 0"

    # A version whose artifact does not match its pointer is refused: the old model stays.
    store.write_version(broken, lambda path: joblib.dump(classifier, path), meta_for(classifier, iris[0]))
    store.pointer_path.write_text(json.dumps({"version": broken, "sha256": "0" * 64}))
    failures_before = value(samples, "tpotserve_model_load_failures_total", model="iris")
    assert not holder.refresh()
    assert not holder.refresh(), "the same bad pointer is not retried (nor counted) again"
    samples = scrape(client)
    assert value(samples, "tpotserve_model_load_failures_total", model="iris") - failures_before == 1
    assert value(samples, "tpotserve_model_serving", model="iris", version=second) == 1
    assert value(samples, "tpotserve_model_serving", model="iris", version=broken) == 0


def test_stored_versions_expose_their_training_figures(store, classifier, iris) -> None:
    version = unique("fig")
    figures = {"training_seconds": 42.5, "cv_score": 0.953, "holdout_score": 0.9667, "scoring": "accuracy"}
    publish(store, version, classifier, meta_for(classifier, iris[0], **figures))
    samples = scrape(make_app(store).test_client())
    assert value(samples, "tpotserve_training_duration_seconds", model="iris", version=version) == 42.5
    assert value(samples, "tpotserve_training_cv_score", model="iris", version=version, scoring="accuracy") == 0.953
    assert value(samples, "tpotserve_training_holdout_score", model="iris", version=version, scoring="accuracy") == 0.9667


def test_without_redis_metrics_still_answer_and_say_the_queue_is_down(store, classifier, iris) -> None:
    publish(store, unique("down"), classifier, meta_for(classifier, iris[0]))
    samples = scrape(make_app(store).test_client())
    assert value(samples, "tpotserve_queue_up") == 0
    assert not [key for key in samples if key[0] == "tpotserve_queue_jobs"]


# --- the trainer's side: RQ's registries in a real Redis --------------------------------
@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    with throwaway_redis(tmp_path) as client:
        yield client


def test_queue_jobs_are_counted_by_the_status_jobs_reports(redis_server: Redis) -> None:
    training = Queue("training", connection=redis_server)
    for n in (4, 9):
        training.enqueue("math.sqrt", n)
    training.enqueue("math.sqrt", "not a number")  # fails
    training.enqueue("math.sqrt", 16).cancel()
    # What DELETE /jobs/<id> leaves of a running job: RQ marks it stopped, in the failed registry.
    stopped = training.enqueue("math.sqrt", 25)
    training.remove(stopped)
    stopped.set_status(JobStatus.STOPPED)
    FailedJobRegistry(queue=training).add(stopped, ttl=600)
    SimpleWorker([training], connection=redis_server).work(burst=True)
    training.enqueue("math.sqrt", 36)  # still queued

    families = {f.name: f for f in metrics.QueueCollector(redis_server).collect()}
    assert [s.value for s in families["tpotserve_queue_up"].samples] == [1]
    jobs = families["tpotserve_queue_jobs"].samples
    counts = {(s.labels["queue"], s.labels["status"]): s.value for s in jobs}
    assert counts == {
        ("training", "queued"): 1,
        ("training", "started"): 0,
        ("training", "finished"): 2,
        ("training", "failed"): 1,
        ("training", "canceled"): 2,
        ("control", "queued"): 0,
        ("control", "started"): 0,
        ("control", "finished"): 0,
        ("control", "failed"): 0,
        ("control", "canceled"): 0,
    }


# --- multiprocess mode: forked workers, gunicorn_config's hooks -------------------------------
MULTIPROCESS_DRIVER = textwrap.dedent(
    """
    import json, multiprocessing, os, sys, types
    from pathlib import Path

    from tpotserve_api import gunicorn_config  # the master: sets PROMETHEUS_MULTIPROC_DIR

    gunicorn_config.on_starting(None)  # empties the directory of stale *.db files

    def worker(requests, versions):
        from tpotserve_api import metrics  # imported after the fork, as with preload_app = False
        metrics.API_WORKERS.set(1)
        metrics.REQUESTS.labels("POST", "/predict", "200").inc(requests)
        metrics.record_predictions("iris", versions[-1], ["setosa"] * requests, True)
        previous = None
        for version in versions:
            metrics.record_model_loaded("iris", previous, version, 0.25)
            previous = version

    fork = multiprocessing.get_context("fork")
    dead = fork.Process(target=worker, args=(2, ["v1"]))
    live = fork.Process(target=worker, args=(3, ["v1", "v2"]))
    for process in (dead, live):
        process.start()
        process.join()
    gunicorn_config.child_exit(None, types.SimpleNamespace(pid=dead.pid))  # Gunicorn reaped it

    from redis import Redis
    from tpotserve.registry import ModelRegistry
    from tpotserve_api import metrics

    body = metrics.exposition(ModelRegistry(Path(sys.argv[1]), None, "iris"), Redis.from_url("redis://127.0.0.1:1/0"))
    print(json.dumps({"env": os.environ["PROMETHEUS_MULTIPROC_DIR"],
                      "files": sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])),
                      "body": body.decode()}))
    """
)


def test_multiprocess_mode_sums_workers_and_forgets_a_dead_workers_gauges(tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    (shared / "counter_999999.db").write_bytes(b"stale file of a previous run")
    (shared / "keep.txt").write_text("not prometheus-client's")
    env = {k: v for k, v in os.environ.items() if k.lower() not in {n.lower() for n in Settings.model_fields}}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(shared)
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_DRIVER, str(tmp_path / "models")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["env"] == str(shared)
    assert "counter_999999.db" not in out["files"] and "keep.txt" in out["files"]
    samples = parse(out["body"])
    # Counters and histograms: both workers, the dead one included.
    assert value(samples, "tpotserve_http_requests_total", method="POST", route="/predict", status="200") == 5
    assert value(samples, "tpotserve_predictions_total", model="iris", model_version="v1", predicted_class="setosa") == 2
    assert value(samples, "tpotserve_predictions_total", model="iris", model_version="v2", predicted_class="setosa") == 3
    assert value(samples, "tpotserve_model_load_seconds_count", model="iris") == 3
    # Live gauges: only the live worker. It moved from v1 to v2; the dead one served v1.
    assert value(samples, "tpotserve_api_workers") == 1
    assert value(samples, "tpotserve_model_serving", model="iris", version="v2") == 1
    assert value(samples, "tpotserve_model_serving", model="iris", version="v1") == 0
