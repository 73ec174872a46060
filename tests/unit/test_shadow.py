"""Shadow candidates: the decision (tpotserve.shadow.evaluate) on real numbers, and the whole
path through the app over a real redis-server: a version put in shadow by the control job's
function, sampled rows answered by the worker's shadow runner, agreement and latency read
back, feedback scoring both versions on the same rows, the refusals, and Redis down.

The runner's thread is not relied on: each test drains it (``ShadowRunner.drain``), which is
what the thread does every MODEL_POLL_INTERVAL_S / MONITORING_FLUSH_S.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_diabetes, load_iris
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

from tpotserve import shadow
from tpotserve.policy import POLICY_NAME, Promotion
from tpotserve.store import SHADOW_NAME, ModelStore
from tpotserve_api.app import create_app
from tpotserve_api.shadow_runner import DROPPED
from tpotserve_trainer import jobs

from tests.prometheus import parse, value
from tests.unit.test_api import AUTH, FEATURES, SIGNING_KEY, assert_error, settings_for
from tests.unit.test_monitoring import _publish, redis, redis_url  # noqa: F401 - fixtures

NOW = 1_800_000_000.0
SINCE = "2027-01-15T08:00:00Z"  # NOW - 0 s is 2027-01-15T08:00:00Z


# --- evaluate, on what real models answer ------------------------------------------------
def _classification_fields(served: np.ndarray, shadow_: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The paired counters feedback would have written for these answers."""
    served_ok, shadow_ok = served == truth, shadow_ == truth
    return {"n": len(truth), "ok_served": served_ok.sum(), "ok_shadow": shadow_ok.sum(),
            "b": (shadow_ok & ~served_ok).sum(), "c": (served_ok & ~shadow_ok).sum()}


def _regression_fields(served: np.ndarray, shadow_: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    sq_served, sq_shadow = (served - truth) ** 2, (shadow_ - truth) ** 2
    d = sq_served - sq_shadow
    return {"n": len(truth), "sq_served": sq_served.sum(), "sq_shadow": sq_shadow.sum(), "d": d.sum(),
            "d2": (d * d).sum(), "y": truth.sum(), "y2": (truth * truth).sum()}


def _figures(fields: dict[str, float]) -> dict[str, Any]:
    return {"labelled": shadow.labelled_scores({k: float(v) for k, v in fields.items()})}


@pytest.fixture(scope="module")
def iris_split() -> tuple:
    X, y = load_iris(return_X_y=True)
    # Many rows: the test sees the same held-out rows twice over (bootstrap), as live traffic would.
    X_train, X_live, y_train, y_live = train_test_split(X, y, test_size=0.5, random_state=0, stratify=y)
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(X_live), 600)
    return X_train, y_train, X_live[pick], y_live[pick]


def test_a_better_classifier_is_promoted_and_a_worse_one_never(iris_split) -> None:
    X_train, y_train, X_live, y_live = iris_split
    good = LogisticRegression(max_iter=1000).fit(X_train, y_train).predict(X_live)
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X_train, y_train).predict(X_live)
    assert (good == y_live).mean() > 0.9 > 0.7 > (stump == y_live).mean()  # what the models really do

    promotion = Promotion(min_rows=100, margin=0.02, p_value=0.05)
    better = shadow.evaluate(_figures(_classification_fields(stump, good, y_live)), "classification", promotion,
                             SINCE, NOW)
    assert better["decision"] == "promote", better
    assert better["b"] > better["c"] and better["p_value"] < 1e-6 and better["effect"] > 0.2
    assert "McNemar" in better["test"]

    worse = shadow.evaluate(_figures(_classification_fields(good, stump, y_live)), "classification", promotion,
                            SINCE, NOW)
    assert worse["decision"] == "wait" and worse["p_value"] > 0.99 and worse["effect"] < 0, worse
    same = shadow.evaluate(_figures(_classification_fields(good, good, y_live)), "classification", promotion,
                           SINCE, NOW)
    assert same["decision"] == "wait" and same["p_value"] is None and same["effect"] == 0


def test_the_margin_holds_back_a_significant_but_small_gain(iris_split) -> None:
    X_train, y_train, X_live, y_live = iris_split
    good = LogisticRegression(max_iter=1000).fit(X_train, y_train).predict(X_live)
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X_train, y_train).predict(X_live)
    fields = _classification_fields(stump, good, y_live)
    gain = (fields["ok_shadow"] - fields["ok_served"]) / fields["n"]
    held = shadow.evaluate(_figures(fields), "classification", Promotion(min_rows=100, margin=gain + 0.01),
                           SINCE, NOW)
    assert held["decision"] == "wait" and "margin" in held["reason"]


def test_below_min_rows_it_waits_and_past_max_age_it_is_dropped(iris_split) -> None:
    X_train, y_train, X_live, y_live = iris_split
    good = LogisticRegression(max_iter=1000).fit(X_train, y_train).predict(X_live[:50])
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X_train, y_train).predict(X_live[:50])
    figures = _figures(_classification_fields(stump, good, y_live[:50]))
    promotion = Promotion(min_rows=100, max_age_s=3600)
    early = shadow.evaluate(figures, "classification", promotion, SINCE, NOW + 60)
    assert early["decision"] == "wait" and early["rows"] == 50 and "100 needed" in early["reason"]
    late = shadow.evaluate(figures, "classification", promotion, SINCE, NOW + 3601)
    assert late["decision"] == "drop" and late["age_s"] == 3601
    worse_late = shadow.evaluate(_figures(_classification_fields(good, stump, y_live[:50])), "classification",
                                 Promotion(min_rows=10, max_age_s=3600), SINCE, NOW + 7200)
    assert worse_late["decision"] == "drop"
    nothing = shadow.evaluate({"labelled": {"rows": 0}}, "classification", promotion, SINCE, NOW)
    assert nothing["decision"] == "wait" and nothing["p_value"] is None


def test_regression_uses_a_paired_t_test_and_the_relative_mse_drop() -> None:
    X, y = load_diabetes(return_X_y=True)
    X_train, X_live, y_train, y_live = train_test_split(X, y, test_size=0.5, random_state=0)
    full = LinearRegression().fit(X_train, y_train).predict(X_live)
    one = LinearRegression().fit(X_train[:, [2]], y_train).predict(X_live[:, [2]])  # BMI alone: worse
    promotion = Promotion(min_rows=100, margin=0.05)
    better = shadow.evaluate(_figures(_regression_fields(one, full, y_live)), "regression", promotion, SINCE, NOW)
    mse_one, mse_full = ((one - y_live) ** 2).mean(), ((full - y_live) ** 2).mean()
    assert better["decision"] == "promote", better
    assert better["effect"] == pytest.approx((mse_one - mse_full) / mse_one) and better["p_value"] < 0.01
    assert "paired t-test" in better["test"]
    from scipy import stats  # the summary-statistics t equals scipy's on the rows
    d = (one - y_live) ** 2 - (full - y_live) ** 2
    assert better["p_value"] == pytest.approx(stats.ttest_1samp(d, 0, alternative="greater").pvalue)
    worse = shadow.evaluate(_figures(_regression_fields(full, one, y_live)), "regression", promotion, SINCE, NOW)
    assert worse["decision"] == "wait" and worse["effect"] < 0 and worse["p_value"] > 0.99


def test_latency_quantiles_interpolate_inside_their_bucket() -> None:
    counts = [0] * len(shadow.LATENCY_BUCKETS_S)
    counts[2] = 10  # (1 ms, 2 ms]
    assert shadow.latency_quantile(counts, 0.5) == pytest.approx(0.0015)
    counts[-1] = 10  # beyond the last finite bound
    assert shadow.latency_quantile(counts, 0.95) == shadow.LATENCY_BUCKETS_S[-2]
    assert shadow.latency_quantile([0] * len(counts), 0.5) is None


# --- through the app ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def iris_models() -> dict[str, Any]:
    X, y = load_iris(return_X_y=True)
    names = np.array(load_iris().target_names)[y]
    return {"X": X, "y": names,
            "good": LogisticRegression(max_iter=1000).fit(X, names),
            "dummy": DummyClassifier(strategy="most_frequent").fit(X, names)}


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models" / "models" / "iris", SIGNING_KEY.encode())


@pytest.fixture
def stack(store, redis_url, redis, iris_models, monkeypatch):  # noqa: F811 - fixtures
    """v_good served, v_dummy stored; the control job's functions see the same volume."""
    X, y = iris_models["X"], iris_models["y"]
    _publish(store, "v_dummy", iris_models["dummy"], X, y, holdout_score=0.33)
    _publish(store, "v_good", iris_models["good"], X, y, holdout_score=0.97)
    for key, val in {"MODEL_DIR": str(store.root.parents[1]), "MODEL_SIGNING_KEY": SIGNING_KEY}.items():
        monkeypatch.setenv(key, val)
    app = create_app(settings_for(store, redis_url=redis_url), poll=False)
    return app


def _predict(client, X: np.ndarray, batch: int) -> list[tuple[str, list]]:
    out = []
    for start in range(0, len(X), batch):
        rows = [dict(zip(FEATURES, r)) for r in X[start:start + batch].tolist()]
        resp = client.post("/predict", json={"instances": rows} if batch > 1 else rows[0])
        assert resp.status_code == 200, resp.get_data(as_text=True)
        body = resp.get_json()
        out.append((resp.headers["X-Prediction-ID"], body["predictions"] if batch > 1 else [body["Prediction"]]))
    return out


def test_a_shadow_sees_the_served_rows_and_feedback_scores_both_on_them(stack, store, iris_models) -> None:
    X, y = iris_models["X"], iris_models["y"]
    client = stack.test_client()
    assert client.get("/models/iris/shadow").get_json() == {"model": "iris", "shadow": None}
    result = jobs.set_shadow("v_dummy", model="iris", share=1.0, reason="test", by="unit")
    assert result["shadow"]["version"] == "v_dummy" and result["shadow"]["share"] == 1.0
    assert store.read_json(SHADOW_NAME)["since"].endswith("Z")
    runner = stack.extensions["tpotserve"].shadows
    _predict(client, X[:1], batch=1)  # the worker learns of the model's shadow at its next poll
    runner.drain()
    answers = _predict(client, X[:10], batch=1) + _predict(client, X[10:150], batch=70)
    assert runner.drain() and stack.extensions["tpotserve"].monitor.flush()

    report = client.get("/models/iris/shadow").get_json()
    served = LogisticRegression(max_iter=1000).fit(X, y).predict(X[:150])
    expected_agreement = float((served == iris_models["dummy"].predict(X[:150])).mean())
    figures = report["figures"]
    assert report["served_version"] == "v_good" and report["shadow"]["version"] == "v_dummy"
    assert figures["rows"] == 150 and figures["agreement"] == pytest.approx(expected_agreement)
    assert figures["latency"]["calls"] == 12 and figures["latency"]["p95_ms"] >= figures["latency"]["p50_ms"] > 0
    assert report["promotion"]["enabled"] is False and report["evaluation"]["decision"] == "wait"

    items = [{"id": f"{pid}:{i}", "label": str(y[start + i])}
             for (pid, batch), start in zip(answers, [*range(10), 10, 80]) for i in range(len(batch))]
    body = client.post("/models/iris/feedback", json=items).get_json()
    assert body["accepted"] == 150 and body["paired_with_shadow"] == 150
    labelled = client.get("/shadow").get_json()["figures"]["labelled"]  # the default model's twin
    assert labelled["rows"] == 150
    assert labelled["served"]["accuracy"] == pytest.approx(float((served == y[:150]).mean()))
    assert labelled["shadow"]["accuracy"] == pytest.approx(1 / 3)
    assert labelled["b"] == 0 and labelled["c"] == labelled["served_correct"] - 50
    evaluation = client.get("/shadow").get_json()["evaluation"]
    assert evaluation["decision"] == "wait" and evaluation["p_value"] == 1.0  # never promoted: it is worse

    metrics = parse(client.get("/metrics").get_data(as_text=True))
    pair = {"model": "iris", "version": "v_dummy", "served_version": "v_good"}
    assert value(metrics, "tpotserve_shadow_agreement", **pair) == pytest.approx(expected_agreement)
    assert value(metrics, "tpotserve_shadow_live_score", **pair, role="shadow") == pytest.approx(1 / 3)
    assert value(metrics, "tpotserve_shadow_latency_seconds", **pair, quantile="0.95") > 0

    cleared = jobs.clear_shadow(model="iris", reason="test", by="unit")
    assert cleared["cleared"]["version"] == "v_dummy" and store.read_json(SHADOW_NAME) is None
    runner.drain()
    _predict(client, X[:5], batch=5)
    assert runner.drain() and client.get("/shadow").get_json()["shadow"] is None


def test_the_refusals_come_before_anything_is_enqueued(stack, store, iris_models) -> None:
    client = stack.test_client()
    assert_error(client.post("/models/iris/versions/v_good/shadow", headers=AUTH), 409, "conflict", "version")
    assert_error(client.post("/models/iris/versions/nosuch/shadow", headers=AUTH), 404, "not_found", "version")
    assert_error(client.post("/models/iris/versions/v_dummy/shadow", headers=AUTH, json={"share": 2}), 422,
                 "invalid_input", "share")
    assert_error(client.post("/models/iris/versions/v_dummy/shadow"), 401, "unauthorized")
    assert_error(client.delete("/models/iris/shadow"), 401, "unauthorized")
    assert_error(client.get("/models/nosuch/shadow"), 404, "not_found")
    # Another contract: a regressor of other features.
    X, y = load_diabetes(return_X_y=True)
    _publish_other = store.write_version
    from tests.unit.test_api import make_meta
    model = Ridge().fit(X[:, :3], y)
    _publish_other("v_other", lambda path: __import__("joblib").dump(model, path),
                   make_meta(model, X[:, :3], names=["a", "b", "c"], task="regression", classes=None).to_json())
    resp = client.post("/models/iris/versions/v_other/shadow", headers=AUTH)
    error = resp.get_json()["error"]
    assert resp.status_code == 409 and error["code"] == "contract_changed" and error["field"] == "version"
    assert "another contract" in error["message"] and error["current_version"] == "v_good"
    assert error["contract_change"]["task"] == {"from": "classification", "to": "regression"}
    with pytest.raises(Exception, match="another contract"):
        jobs.set_shadow("v_other", model="iris")  # the control worker checks again
    assert store.read_json(SHADOW_NAME) is None


def test_a_held_back_candidate_goes_in_shadow_when_the_policy_says_so(stack, store) -> None:
    outcome = {"published": False, "version": "v_dummy", "gate": {"reason": "worse than the current model"}}
    assert jobs.shadow_held_back(store, "iris", outcome) is None  # no policy: nothing
    store.write_json(POLICY_NAME, {"policy": {"shadow": {"held_back": True, "share": 0.2}}})  # as set_policy writes it
    doc = jobs.shadow_held_back(store, "iris", outcome)
    assert doc["version"] == "v_dummy" and doc["share"] == 0.2 and doc["by"] == "trainer"
    assert doc["reason"] == "held back by the gate: worse than the current model"
    assert store.read_json(SHADOW_NAME) == doc
    assert jobs.shadow_held_back(store, "iris", {**outcome, "published": True}) is None
    # Promoting the shadow (a normal activation) takes it out of shadow, logged with its reason.
    jobs.activate("v_dummy", model="iris", reason="promotion", by="scheduler")
    assert store.read_json(SHADOW_NAME) is None
    assert store.activations()[0]["reason"] == "promotion"


def test_the_default_share_is_the_policys_else_shadow_share(store, tmp_path) -> None:
    settings = settings_for(store, shadow_share=0.07)
    assert shadow.default_share(store, settings) == 0.07
    store.write_json(POLICY_NAME, {"policy": {"shadow": {"share": 0.5}}})
    assert shadow.default_share(store, settings) == 0.5


def test_with_redis_down_predictions_answer_and_the_shadow_rows_are_counted_lost(store, iris_models,
                                                                                   monkeypatch) -> None:
    X, y = iris_models["X"], iris_models["y"]
    _publish(store, "v_dummy", iris_models["dummy"], X, y)
    _publish(store, "v_good", iris_models["good"], X, y)
    store.write_json(SHADOW_NAME, shadow.document("v_dummy", 1.0, "test", "unit"))
    app = create_app(settings_for(store, shadow_queue_size=2), poll=False)  # Redis on a closed port
    runner = app.extensions["tpotserve"].shadows
    client = app.test_client()
    runner.drain()  # learns nothing yet: no model asked
    _predict(client, X[:1], batch=1)
    runner.poll()
    before_redis, before_full = DROPPED.labels("redis")._value.get(), DROPPED.labels("queue_full")._value.get()
    _predict(client, X[:5], batch=1)  # 2 queued, 3 dropped: the queue is full and nothing waits
    assert DROPPED.labels("queue_full")._value.get() - before_full == 3
    assert runner.drain() is False
    assert DROPPED.labels("redis")._value.get() - before_redis == 2
    assert_error(client.get("/shadow"), 503, "queue_unavailable")


def test_a_regression_shadow_agrees_within_the_tolerance_and_feedback_pairs_squared_errors(
        tmp_path, redis_url, redis, monkeypatch) -> None:  # noqa: F811 - fixtures
    X, y = load_diabetes(return_X_y=True)
    X = X[:, :4]
    store = ModelStore(tmp_path / "models" / "models" / "iris", SIGNING_KEY.encode())
    served_model, shadow_model = Ridge(alpha=0.1).fit(X, y), Ridge(alpha=10.0).fit(X, y)
    _publish(store, "r_shadow", shadow_model, X, y, task="regression", classes=None, scoring="r2")
    _publish(store, "r_served", served_model, X, y, task="regression", classes=None, scoring="r2")
    store.write_json(SHADOW_NAME, shadow.document("r_shadow", 1.0, "test", "unit"))
    app = create_app(settings_for(store, redis_url=redis_url), poll=False)
    client, runner = app.test_client(), app.extensions["tpotserve"].shadows
    _predict(client, X[:1], batch=1)
    runner.drain()
    (pid, predictions), = _predict(client, X[:80], batch=80)
    assert runner.drain() and app.extensions["tpotserve"].monitor.flush()

    served, other = served_model.predict(X[:80]), shadow_model.predict(X[:80])
    tolerance = shadow.REGRESSION_TOLERANCE * float(np.std(y))  # the profile's target std
    report = client.get("/shadow").get_json()
    assert report["figures"]["rows"] == 80
    assert report["figures"]["agreeing_rows"] == int((np.abs(served - other) <= tolerance).sum())

    body = client.post("/feedback", json=[{"id": f"{pid}:{i}", "value": float(t)} for i, t in enumerate(y[:80])])
    assert body.get_json()["paired_with_shadow"] == 80
    labelled = client.get("/shadow").get_json()["figures"]["labelled"]
    assert labelled["served"]["mse"] == pytest.approx(((served - y[:80]) ** 2).mean())
    assert labelled["shadow"]["mse"] == pytest.approx(((other - y[:80]) ** 2).mean())
    d = (served - y[:80]) ** 2 - (other - y[:80]) ** 2
    assert labelled["d_sum"] == pytest.approx(d.sum()) and labelled["d2_sum"] == pytest.approx((d * d).sum())
    assert client.get("/shadow").get_json()["evaluation"]["test"].startswith("paired t-test")


class SlowClassifier(ClassifierMixin, BaseEstimator):
    """Answers like the model it wraps, a quarter of a second late (a shadow that is slow)."""

    def __init__(self, inner: Any = None, delay_s: float = 0.25) -> None:
        self.inner = inner
        self.delay_s = delay_s

    def fit(self, X: Any, y: Any) -> SlowClassifier:
        self.inner = LogisticRegression(max_iter=1000).fit(X, y)
        self.classes_ = self.inner.classes_
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.inner.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def test_a_slow_shadow_never_slows_the_served_answer(store, redis_url, redis, iris_models) -> None:  # noqa: F811
    """With the runner's own thread (as under Gunicorn): each served answer comes back long before
    the shadow's 0.25 s, and the shadow's rows and its latency still reach the report."""
    X, y = iris_models["X"], iris_models["y"]
    _publish(store, "v_slow", SlowClassifier().fit(X, y), X, y)
    _publish(store, "v_good", iris_models["good"], X, y)
    store.write_json(SHADOW_NAME, shadow.document("v_slow", 1.0, "test", "unit"))
    app = create_app(settings_for(store, redis_url=redis_url, model_poll_interval_s=0.05,
                                  monitoring_flush_s=0.1), poll=True)
    client = app.test_client()
    slowest = 0.0
    deadline = time.monotonic() + 20
    while True:
        started = time.perf_counter()
        _predict(client, X[:1], batch=1)
        slowest = max(slowest, time.perf_counter() - started)
        figures = client.get("/shadow").get_json()["figures"]
        if figures["rows"] >= 3:
            break
        assert time.monotonic() < deadline, figures
        time.sleep(0.05)
    assert slowest < 0.2, slowest  # the shadow takes 0.25 s per call, in the background
    assert figures["latency"]["mean_ms"] >= 250 and figures["agreement"] == 1.0
