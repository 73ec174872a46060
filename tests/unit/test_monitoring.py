"""Drift, feedback and live quality through the app, over a real redis-server.

The app and the model store are real (as in test_api.py); so is Redis: a redis-server of
this module's own on a free port. Each test flushes the worker's buffer itself
(``Monitor.flush``), which is what the flushing thread does every MONITORING_FLUSH_S.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from redis import Redis
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression, Ridge

from tpotserve.drift import PROFILE_NAME, reference_profile
from tpotserve.store import ModelStore
from tpotserve_api.app import create_app
from tpotserve_api.monitoring import DROPPED

from tests.prometheus import parse, value
from tests.tools import redis_server
from tests.unit.test_api import FEATURES, SIGNING_KEY, assert_error, make_meta, settings_for


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    with redis_server(tmp_path_factory.mktemp("redis")) as client:
        yield f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"


@pytest.fixture
def redis(redis_url):
    client = Redis.from_url(redis_url)
    client.flushdb()
    return client


def _iris_like(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Rows whose last feature (PetalWidth) moves by ``shift``; the others stay put."""
    X = np.column_stack([rng.normal(5.8, 0.8, n), rng.normal(3.0, 0.4, n), rng.normal(3.8, 1.7, n),
                         rng.normal(1.2, 0.7, n)])
    X[:, 3] += shift
    return X


@pytest.fixture(scope="module")
def training() -> tuple[np.ndarray, np.ndarray]:
    X = _iris_like(np.random.default_rng(0), 600)
    y = np.where(X[:, 2] < 3.0, "small", "large")
    return X, y


def _publish(store: ModelStore, version: str, model: Any, X: np.ndarray, y: np.ndarray, profile: bool = True,
             **meta: Any) -> None:
    frame = pd.DataFrame(X, columns=FEATURES)
    documents = ({PROFILE_NAME: json.dumps(reference_profile(frame, pd.Series(y), meta.get("task", "classification"))
                                           ).encode()} if profile else {})
    store.write_version(version, lambda path: joblib.dump(model, path), make_meta(model, X, **meta).to_json(),
                        documents)
    store.set_current(version)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models" / "models" / "iris", SIGNING_KEY.encode())


@pytest.fixture
def app(store, redis_url, redis, training):
    X, y = training
    _publish(store, "v1", LogisticRegression(max_iter=500).fit(X, y), X, y, holdout_score=0.93)
    return create_app(settings_for(store, redis_url=redis_url, drift_min_rows=100), poll=False)


def _send(client, rows: np.ndarray, batch: int = 50) -> list[tuple[str, list]]:
    """Predict ``rows`` in batches; (prediction id, predictions) of each answer."""
    out = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        resp = client.post("/predict", json={"instances": [dict(zip(FEATURES, r)) for r in chunk.tolist()]})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        out.append((resp.headers["X-Prediction-ID"], resp.get_json()["predictions"]))
    return out


def test_rows_like_the_training_rows_do_not_drift_and_a_shifted_feature_does(app) -> None:
    client = app.test_client()
    rng = np.random.default_rng(1)
    _send(client, _iris_like(rng, 400))
    assert app.extensions["tpotserve"].monitor.flush()
    same = client.get("/models/iris/drift").get_json()
    assert same["rows"] == 400 and same["enough_rows"] and same["verdict"] == "ok", same
    assert same["drifted_features"] == [] and same["drifted_share"] == 0.0
    assert all(f["js_distance"] < 0.1 and f["psi"] < 0.2 for f in same["features"])

    client.application.extensions["tpotserve"].queue.redis.flushdb()
    _send(client, _iris_like(rng, 400, shift=1.0))
    app.extensions["tpotserve"].monitor.flush()
    shifted = client.get("/drift?window=600").get_json()  # the default model's unnamed twin
    assert shifted["verdict"] == "drift" and shifted["drifted_features"] == ["PetalWidth"], shifted
    assert shifted["drifted_share"] == 0.25
    petal = next(f for f in shifted["features"] if f["feature"] == "PetalWidth")
    assert petal["verdict"] == "drift" and petal["out_of_range_share"] > 0
    assert len(petal["live_shares"]) == len(petal["reference_shares"]) == len(petal["bins"])


def test_too_few_rows_give_no_verdict(app) -> None:
    client = app.test_client()
    _send(client, _iris_like(np.random.default_rng(2), 20))
    app.extensions["tpotserve"].monitor.flush()
    report = client.get("/models/iris/drift").get_json()
    assert report["rows"] == 20 and report["verdict"] == "not_enough_rows" and report["drifted_share"] is None


def test_feedback_gives_the_live_accuracy_and_reports_every_skip(app) -> None:
    client = app.test_client()
    rows = _iris_like(np.random.default_rng(3), 40)
    (pid, predictions), = _send(client, rows, batch=40)
    app.extensions["tpotserve"].monitor.flush()
    # The truth: right for the first 30 rows, wrong for the last 10.
    flip = {"small": "large", "large": "small"}
    items = [{"id": f"{pid}:{i}", "label": p if i < 30 else flip[p]} for i, p in enumerate(predictions)]
    bad = [
        {"id": "nosuchid:0", "label": "small"},
        {"id": f"{pid}:0", "label": "small"},  # again: counted once
        {"id": f"{pid}:99", "label": "small"},
        {"id": f"{pid}:1", "label": ["small"]},
        {"id": f"{pid}:2", "label": "medium"},
        {"label": "small"},
    ]
    resp = client.post("/models/iris/feedback", json={"feedback": items + bad})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["accepted"] == 40
    reasons = {s["index"]: s["reason"] for s in body["skipped"]}
    assert set(reasons) == {40, 41, 42, 43, 44, 45}
    assert "unknown or expired" in reasons[40] and "already counted" in reasons[41]
    assert "rows" in reasons[42] and "wrong label type" in reasons[43] and "not a class" in reasons[44]
    quality = client.get("/models/iris/quality").get_json()
    (entry,) = quality["versions"]
    assert entry["version"] == "v1" and entry["rows"] == 40 and entry["accuracy"] == pytest.approx(0.75)
    assert entry["holdout_score"] == 0.93 and entry["served"] is True
    assert sum(quality["skipped"].values()) == 6
    metrics = parse(client.get("/metrics").get_data(as_text=True))
    assert value(metrics, "tpotserve_live_quality", model="iris", version="v1", metric="accuracy") == 0.75
    assert value(metrics, "tpotserve_drift_live_rows", model="iris") == 40


def test_whole_rows_with_their_truth_are_scored_by_the_served_model(app, training) -> None:
    X, y = training
    rows = [{**dict(zip(FEATURES, r)), "species": label} for r, label in zip(X[:20].tolist(), y[:20].tolist())]
    resp = app.test_client().post("/feedback", json={"rows": rows + [{"SepalLength": 1.0}]})
    body = resp.get_json()
    assert body["accepted"] == 20 and [s["index"] for s in body["skipped"]] == [20]
    (entry,) = app.test_client().get("/quality").get_json()["versions"]
    expected = float((LogisticRegression(max_iter=500).fit(X, y).predict(X[:20]) == y[:20]).mean())
    assert entry["accuracy"] == pytest.approx(expected)


def test_regression_feedback_gives_mae_and_r2(tmp_path, redis_url, redis) -> None:
    X, y = load_diabetes(return_X_y=True)
    X = X[:, :4]
    store = ModelStore(tmp_path / "models" / "models" / "iris", SIGNING_KEY.encode())
    model = Ridge().fit(X, y)
    _publish(store, "r1", model, X, y, task="regression", classes=None, scoring="r2")
    app = create_app(settings_for(store, redis_url=redis_url), poll=False)
    client = app.test_client()
    (pid, predictions), = _send(client, X[:50], batch=50)
    app.extensions["tpotserve"].monitor.flush()
    resp = client.post("/feedback", json=[{"id": f"{pid}:{i}", "value": float(t)} for i, t in enumerate(y[:50])]
                       + [{"id": f"{pid}:0", "value": "high"}])
    assert resp.get_json()["accepted"] == 50
    assert "wrong value type" in resp.get_json()["skipped"][0]["reason"]
    (entry,) = client.get("/quality").get_json()["versions"]
    errors = np.array(predictions) - y[:50]
    assert entry["mae"] == pytest.approx(np.abs(errors).mean())
    assert entry["r2"] == pytest.approx(1 - (errors ** 2).sum() / ((y[:50] - y[:50].mean()) ** 2).sum())


def test_a_version_without_a_profile_says_so(store, redis_url, training, redis) -> None:
    X, y = training
    _publish(store, "old", LogisticRegression(max_iter=500).fit(X, y), X, y, profile=False)
    client = create_app(settings_for(store, redis_url=redis_url), poll=False).test_client()
    assert client.post("/predict", json=dict(zip(FEATURES, X[0].tolist()))).status_code == 200
    assert_error(client.get("/models/iris/drift"), 409, "no_reference", "version")


@pytest.mark.parametrize("query, field", [("window=abc", "window"), ("window=0", "window"),
                                          ("since=yesterday", "since"), ("window=60&since=0", "since")])
def test_bad_windows_are_422s(app, query, field) -> None:
    assert_error(app.test_client().get(f"/models/iris/drift?{query}"), 422, "invalid_input", field)


def test_bad_feedback_bodies_are_422s_and_unknown_models_404s(app) -> None:
    client = app.test_client()
    assert_error(client.post("/feedback", json={"nope": []}), 422, "invalid_input")
    assert_error(client.post("/feedback", json={"feedback": {}}), 422, "invalid_input", "feedback")
    assert_error(client.post("/models/nosuch/feedback", json=[]), 404, "not_found")
    assert_error(client.get("/models/nosuch/drift"), 404, "not_found")


def test_with_redis_down_predictions_answer_and_the_loss_is_counted(store, training) -> None:
    X, y = training
    _publish(store, "v1", LogisticRegression(max_iter=500).fit(X, y), X, y)
    app = create_app(settings_for(store), poll=False)  # Redis on a closed port
    before = DROPPED.labels("count_rows")._value.get()
    _send(app.test_client(), X[:30], batch=10)
    assert app.extensions["tpotserve"].monitor.flush() is False
    assert DROPPED.labels("count_rows")._value.get() - before == 30
    assert_error(app.test_client().get("/drift"), 503, "queue_unavailable")


def test_the_one_row_path_counts_as_the_batch_path(training) -> None:
    """Binner.slots (plain Python, for one-row requests) and Binner.count (numpy, for batches)
    put every row in the same bins, inside and outside the training range, numeric and categorical."""
    from tpotserve.drift import Binner

    X, y = training
    frame = pd.DataFrame(X, columns=FEATURES)
    frame["SepalWidth"] = np.round(frame["SepalWidth"])  # few integer values: counted per value
    binner = Binner(reference_profile(frame, pd.Series(y), "classification"))
    assert [f["kind"] for f in binner.features] == ["number", "category", "number", "number"]
    live = np.vstack([frame.to_numpy(), frame.to_numpy() * 1.7 - 1])
    one_by_one = np.zeros(binner.length, dtype=int)
    for row in live.tolist():
        for slot in binner.slots(row):
            one_by_one[slot] += 1
    assert (one_by_one == binner.count(live)).all()
    bins, outside = binner.split(binner.count(live))
    assert [sum(b) for b in bins] == [len(live)] * 4 and all(o > 0 for o in outside)


def test_one_row_and_batch_requests_add_up_in_redis_and_their_answers_are_kept(app, redis, training) -> None:
    """The monitor keeps one-row counts and batch counts apart (a list and a numpy vector) and
    adds them at the flush: Redis holds the counts of every row, once; each answer's JSON names
    the version, its predictions and a time."""
    from tpotserve import live

    X, _ = training
    client = app.test_client()
    singles = [_send(client, X[i:i + 1]) for i in range(7)]
    batch = _send(client, X[7:40], batch=33)
    context = app.extensions["tpotserve"]
    assert context.monitor.flush()
    model = context.models.get(None)
    binner = model.binner
    bucket = int(time.time() // context.settings.monitoring_bucket_s)
    rows, bins, outside = live.live_counts(redis, model.name, model.version, binner.sizes, [bucket - 1, bucket])
    expected_bins, expected_outside = binner.split(binner.count(X[:40]))
    assert (rows, bins, outside) == (40, expected_bins, expected_outside)
    for (prediction_id, predictions), in [*singles, batch]:
        (raw,) = live.find_answers(redis, context.settings, model.name, [prediction_id])
        kept = json.loads(raw)
        assert kept["v"] == model.version and kept["p"] == predictions and abs(kept["t"] - time.time()) < 60


def test_sampling_noise_of_small_windows_is_not_called_drift() -> None:
    """120 training rows against 300 live rows of the same distribution: the JS distance alone
    is often over 0.1 by chance; the chi-square gate keeps the verdict ok. A real shift of the
    same size still is drift."""
    from tpotserve.drift import Binner, compare

    rng = np.random.default_rng(5)
    reference = pd.DataFrame(_iris_like(rng, 120), columns=FEATURES)
    profile = reference_profile(reference, pd.Series(["a"] * 120), "classification")
    binner = Binner(profile)
    over_js, flagged, shifted_flagged = 0, 0, 0
    for seed in range(20):
        for shift, flags in ((0.0, "same"), (1.0, "shift")):
            live = _iris_like(np.random.default_rng(100 + seed), 300, shift=shift)
            bins, outside = binner.split(binner.count(live))
            report = compare(profile, bins, outside, 300, js_threshold=0.1, psi_threshold=0.2, min_rows=100,
                             p_value=0.001)
            if flags == "same":
                over_js += sum(f["js_distance"] > 0.1 for f in report["features"])
                flagged += len(report["drifted_features"])
            else:
                shifted_flagged += report["drifted_features"] == ["PetalWidth"]
    assert over_js > 0  # the distance alone would have raised false alarms
    assert flagged <= 1, flagged  # 80 feature checks; a 0.1 % test may fire about once in a thousand
    assert shifted_flagged == 20
