"""Unit tests for the trainer's pure functions: the holdout split, holdout scoring, the promotion gate.

No TPOT search runs here: models are plain scikit-learn estimators, written
into a temporary ModelStore exactly as the trainer writes a version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import get_scorer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tpotserve.datasets import DataLimits, check_trainable, iris_frame
from tpotserve.errors import InvalidInput
from tpotserve.model_meta import ModelMeta
from tpotserve.store import ModelStore
from tpotserve_trainer import automl, data, jobs

from tests.unit.payloads import training_payload


payload = training_payload


@pytest.fixture(scope="module")
def iris_xy() -> tuple[pd.DataFrame, pd.Series]:
    frame = iris_frame()
    return frame.drop(columns=["species"]), frame["species"]


@pytest.fixture(scope="module")
def split(iris_xy):
    X, y = iris_xy
    return data.holdout_split(X, y, payload())


# --- data.holdout_split --------------------------------------------------------------------
def test_the_holdout_is_the_configured_share(split) -> None:
    X_train, X_hold, y_train, y_hold = split
    assert (len(X_train), len(X_hold)) == (120, 30)
    assert (len(y_train), len(y_hold)) == (120, 30)
    assert list(X_hold.index) == list(y_hold.index)
    assert set(X_train.index).isdisjoint(X_hold.index)
    assert set(X_train.index) | set(X_hold.index) == set(range(150))


def test_the_classification_holdout_is_stratified(split) -> None:
    _, _, y_train, y_hold = split
    # Iris has 50 of each class: the holdout keeps the proportions exactly.
    assert y_hold.value_counts().to_dict() == {"setosa": 10, "versicolor": 10, "virginica": 10}
    assert y_train.value_counts().to_dict() == {"setosa": 40, "versicolor": 40, "virginica": 40}


def test_stratification_keeps_uneven_proportions() -> None:
    y = pd.Series(["a"] * 80 + ["b"] * 20)
    X = pd.DataFrame({"x": np.arange(100, dtype=float)})
    for seed in range(5):
        _, _, _, y_hold = data.holdout_split(X, y, payload(random_state=seed, holdout_fraction=0.25))
        assert y_hold.value_counts().to_dict() == {"a": 20, "b": 5}


def test_the_split_is_deterministic(iris_xy, split) -> None:
    X, y = iris_xy
    again = data.holdout_split(X, y, payload())
    for first, second in zip(split, again):
        assert list(first.index) == list(second.index)
    # Without a seed the split uses 0: the same holdout as an explicit random_state=0.
    seeded = data.holdout_split(X, y, payload(random_state=0))
    assert list(seeded[1].index) == list(split[1].index)
    # Another seed gives another (still stratified) holdout.
    other = data.holdout_split(X, y, payload(random_state=7))
    assert list(other[1].index) != list(split[1].index)
    assert other[3].value_counts().to_dict() == {"setosa": 10, "versicolor": 10, "virginica": 10}


def test_a_regression_split_is_not_stratified_but_sized(iris_xy) -> None:
    X, _ = iris_xy
    y = X["PetalWidth"]
    run = payload(task="regression", target="PetalWidth", scoring="r2", holdout_fraction=0.3)
    X_train, X_hold, _, y_hold = data.holdout_split(X.drop(columns=["PetalWidth"]), y, run)
    assert (len(X_train), len(X_hold)) == (105, 45)
    assert list(y_hold.index) == list(X_hold.index)


def test_every_data_set_check_trainable_accepts_can_be_split() -> None:
    limits = DataLimits(max_rows=1000, max_columns=20, min_rows=20, holdout_fraction=0.2)
    # 7 classes of 3 rows: a 20 % holdout of 21 rows (5) cannot hold one row of each class.
    labels = [f"c{k}" for k in range(7) for _ in range(3)]
    x = np.arange(21, dtype=float)
    small = pd.DataFrame({"x": x, "z": x % 4, "label": labels})
    with pytest.raises(InvalidInput) as info:
        check_trainable(small, "label", None, 2, limits)
    assert info.value.field == "target"
    # 7 classes of 5 rows: accepted, and the trainer's split then works.
    labels = [f"c{k}" for k in range(7) for _ in range(5)]
    x = np.arange(35, dtype=float)
    frame = pd.DataFrame({"x": x, "z": x % 4, "label": labels})
    assert check_trainable(frame, "label", None, 2, limits) == "classification"  # accepted by the API
    run = payload(dataset="ds-x", target="label", cv=2, holdout_fraction=limits.holdout_fraction)
    X_train, X_hold, y_train, y_hold = data.holdout_split(frame.drop(columns=["label"]), frame["label"], run)
    assert y_train.value_counts().min() >= run.cv


def test_feature_schema_records_names_and_ranges(iris_xy) -> None:
    X, _ = iris_xy
    schema = data.feature_schema(X)
    assert [f["name"] for f in schema] == list(X.columns)
    assert schema[3] == {"name": "PetalWidth", "type": "number", "min": 0.1, "max": 2.5}


# --- automl.holdout_score ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(split) -> Pipeline:
    X_train, _, y_train, _ = split
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))]).fit(
        X_train.to_numpy(), y_train.to_numpy()
    )


@pytest.mark.parametrize(
    "scoring", ["accuracy", "balanced_accuracy", "f1_macro", "neg_log_loss", "roc_auc_ovr"]
)
def test_holdout_score_is_sklearns_scorer(fitted, split, scoring: str) -> None:
    _, X_hold, _, y_hold = split
    expected = get_scorer(scoring)(fitted, X_hold.to_numpy(), y_hold.to_numpy())
    score = automl.holdout_score(fitted, X_hold, y_hold, scoring, classes=None, label_encoded=False)
    assert score == pytest.approx(expected)
    assert type(score) is float


def test_holdout_score_for_regression(iris_xy) -> None:
    X, _ = iris_xy
    features, y = X.drop(columns=["PetalWidth"]), X["PetalWidth"]
    model = LinearRegression().fit(features.to_numpy()[:100], y.to_numpy()[:100])
    for scoring in ("r2", "neg_mean_absolute_error"):
        expected = get_scorer(scoring)(model, features.to_numpy()[100:], y.to_numpy()[100:])
        score = automl.holdout_score(model, features[100:], y[100:], scoring, None, False)
        assert score == pytest.approx(expected)
    assert automl.holdout_score(model, features[100:], y[100:], "neg_mean_squared_error", None, False) < 0


def test_holdout_score_maps_labels_through_classes_when_label_encoded(split) -> None:
    X_train, X_hold, y_train, y_hold = split
    classes = ["setosa", "versicolor", "virginica"]
    codes = {label: i for i, label in enumerate(classes)}
    # A pipeline that predicts 0..n-1, as TPOT's label-encoded pipelines do.
    encoded = LogisticRegression(max_iter=1000).fit(X_train.to_numpy(), y_train.map(codes).to_numpy())
    expected = get_scorer("accuracy")(encoded, X_hold.to_numpy(), y_hold.map(codes).to_numpy())
    assert expected > 0.8
    score = automl.holdout_score(encoded, X_hold, y_hold, "accuracy", classes, label_encoded=True)
    assert score == pytest.approx(expected)
    # Without the mapping, integer predictions cannot be compared with the string labels.
    with pytest.raises(ValueError, match="Mix of label input types"):
        automl.holdout_score(encoded, X_hold, y_hold, "accuracy", classes, label_encoded=False)


class _FakeTpot:
    """What _with_own_labels reads from a fitted TPOTEstimator: its label encoder."""

    def __init__(self, y: pd.Series) -> None:
        from sklearn.preprocessing import LabelEncoder

        self.label_encoder_ = LabelEncoder().fit(y)


def test_an_encoded_pipeline_that_accepts_labels_is_refit_on_them(split) -> None:
    X_train, X_hold, y_train, _ = split
    tpot_like = _FakeTpot(y_train)
    fitted = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=1000))])
    fitted.fit(X_train.to_numpy(), tpot_like.label_encoder_.transform(y_train))
    relabeled, classes = automl._with_own_labels(fitted, tpot_like, X_train.to_numpy(), y_train.to_numpy())
    assert classes == ["setosa", "versicolor", "virginica"]
    assert set(relabeled.predict(X_hold.to_numpy())) <= set(classes)


def test_an_xgboost_pipeline_predicts_class_names_and_unpickles_with_sklearn_alone(split, tmp_path) -> None:
    """XGBoost refuses string labels; the artifact must still predict names (docs/architecture.md promise)."""
    from xgboost import XGBClassifier

    X_train, X_hold, y_train, _ = split
    tpot_like = _FakeTpot(y_train)
    fitted = Pipeline([("model", XGBClassifier(n_estimators=20, max_depth=2, n_jobs=1))])
    codes = tpot_like.label_encoder_.transform(y_train)
    fitted.fit(X_train.to_numpy(), codes)
    with pytest.raises(ValueError):  # the premise: a clone cannot be fit on the names
        Pipeline([("model", XGBClassifier(n_estimators=2))]).fit(X_train.to_numpy(), y_train.to_numpy())

    relabeled, classes = automl._with_own_labels(fitted, tpot_like, X_train.to_numpy(), y_train.to_numpy())
    assert classes == ["setosa", "versicolor", "virginica"]
    names = relabeled.predict(X_hold.to_numpy())
    expected = tpot_like.label_encoder_.inverse_transform(fitted.predict(X_hold.to_numpy()))
    assert list(names) == list(expected)  # the same model, decoded
    np.testing.assert_allclose(
        relabeled.predict_proba(X_hold.to_numpy()), fitted.predict_proba(X_hold.to_numpy()), rtol=1e-6
    )
    assert type(relabeled).__module__.startswith("sklearn.")  # no class of ours inside the pickle
    path = tmp_path / "model.joblib"
    joblib.dump(relabeled, path)
    assert list(joblib.load(path).predict(X_hold.to_numpy())) == list(names)


def test_holdout_score_uses_the_order_of_classes(split) -> None:
    X_train, X_hold, y_train, y_hold = split
    classes = ["virginica", "setosa", "versicolor"]  # the order the encoder used, not alphabetical
    codes = {label: i for i, label in enumerate(classes)}
    encoded = LogisticRegression(max_iter=1000).fit(X_train.to_numpy(), y_train.map(codes).to_numpy())
    expected = get_scorer("f1_macro")(encoded, X_hold.to_numpy(), y_hold.map(codes).to_numpy())
    assert automl.holdout_score(encoded, X_hold, y_hold, "f1_macro", classes, True) == pytest.approx(expected)


# --- jobs.promotion_gate ---------------------------------------------------------------------------
FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def publish(store: ModelStore, version: str, model: Any, X: pd.DataFrame, **meta: Any) -> dict:
    """Write and activate a version with the metadata keys the gate reads."""
    values = {
        "task": "classification",
        "target": "species",
        "features": data.feature_schema(X),
        "classes": [str(c) for c in getattr(model, "classes_", [])],
        "label_encoded": False,
    }
    values.update(meta)
    written = store.write_version(version, lambda path: joblib.dump(model, path), ModelMeta(**values).to_json())
    store.set_current(version)
    return written


def gate(store: ModelStore, split, new_score: float, **run: Any) -> dict:
    _, X_hold, _, y_hold = split
    return jobs.promotion_gate(store, payload(**run), list(X_hold.columns), new_score, X_hold, y_hold)


@pytest.fixture
def dummy(split) -> DummyClassifier:
    X_train, _, y_train, _ = split
    return DummyClassifier(strategy="most_frequent").fit(X_train.to_numpy(), y_train.to_numpy())


def test_promote_always_publishes_even_over_a_better_model(store, split, fitted) -> None:
    publish(store, "good", fitted, split[0])
    result = gate(store, split, 0.0, promote="always")
    assert result["promoted"] is True
    assert result["mode"] == "always"
    assert result["reason"] == "promote=always"
    assert result["new_holdout_score"] == 0.0


def test_promote_never_keeps_the_current_model_even_over_a_worse_one(store, split, dummy) -> None:
    publish(store, "weak", dummy, split[0])
    result = gate(store, split, 1.0, promote="never")
    assert result["promoted"] is False
    assert result["mode"] == "never"
    assert "never" in result["reason"]


def test_promote_never_on_an_empty_store(store, split) -> None:
    assert gate(store, split, 1.0, promote="never")["promoted"] is False


def test_auto_with_no_current_model_publishes(store, split) -> None:
    result = gate(store, split, 0.1)
    assert result["promoted"] is True
    assert "no comparable" in result["reason"]
    assert result["current_version"] is None and result["current_holdout_score"] is None


def test_auto_with_a_current_model_of_another_feature_schema_publishes(store, split, fitted) -> None:
    X_train = split[0]
    renamed = X_train.rename(columns={"PetalWidth": "petal_width"})
    publish(store, "other-features", fitted, renamed)  # a far better model, but not comparable
    result = gate(store, split, 0.1)
    assert result["promoted"] is True
    assert "no comparable current model" in result["reason"]
    assert result["current_version"] is None


@pytest.mark.parametrize(
    "meta",
    [{"target": "genus"}, {"task": "regression"}],
    ids=["other-target", "other-task"],
)
def test_auto_with_a_current_model_of_another_target_or_task_publishes(store, split, fitted, meta) -> None:
    publish(store, "other", fitted, split[0], **meta)
    result = gate(store, split, 0.1)
    assert result["promoted"] is True
    assert "no comparable" in result["reason"]


def test_auto_keeps_a_better_current_model(store, split, fitted) -> None:
    _, X_hold, _, y_hold = split
    publish(store, "good", fitted, split[0])
    current = automl.holdout_score(fitted, X_hold, y_hold, "accuracy", None, False)
    assert current > 0.9
    result = gate(store, split, current - 0.2)
    assert result["promoted"] is False
    assert result["current_version"] == "good"
    assert result["current_holdout_score"] == pytest.approx(current)
    assert "worse" in result["reason"]


def test_auto_replaces_a_worse_current_model(store, split, dummy) -> None:
    _, X_hold, _, y_hold = split
    publish(store, "weak", dummy, split[0])
    current = automl.holdout_score(dummy, X_hold, y_hold, "accuracy", None, False)
    assert current == pytest.approx(1 / 3)
    result = gate(store, split, 0.9)
    assert result["promoted"] is True
    assert result["current_version"] == "weak"
    assert result["current_holdout_score"] == pytest.approx(current)
    assert "not worse" in result["reason"]


def test_auto_publishes_on_a_tie(store, split, fitted) -> None:
    _, X_hold, _, y_hold = split
    publish(store, "good", fitted, split[0])
    current = automl.holdout_score(fitted, X_hold, y_hold, "accuracy", None, False)
    assert gate(store, split, current)["promoted"] is True


def test_auto_compares_with_the_runs_scoring(store, split, fitted) -> None:
    _, X_hold, _, y_hold = split
    publish(store, "good", fitted, split[0])
    log_loss = automl.holdout_score(fitted, X_hold, y_hold, "neg_log_loss", None, False)
    result = gate(store, split, log_loss - 1.0, scoring="neg_log_loss")
    assert result["current_holdout_score"] == pytest.approx(log_loss)
    assert result["promoted"] is False


def test_auto_scores_a_label_encoded_current_model_through_its_classes(store, split) -> None:
    X_train, X_hold, y_train, y_hold = split
    classes = ["setosa", "versicolor", "virginica"]
    codes = {label: i for i, label in enumerate(classes)}
    encoded = LogisticRegression(max_iter=1000).fit(X_train.to_numpy(), y_train.map(codes).to_numpy())
    publish(store, "encoded", encoded, X_train, classes=classes, label_encoded=True)
    expected = automl.holdout_score(encoded, X_hold, y_hold, "accuracy", classes, True)
    assert expected > 0.8  # mapped: a real score, not 0
    result = gate(store, split, 0.5)
    assert result["current_holdout_score"] == pytest.approx(expected)
    assert result["promoted"] is False


def test_auto_publishes_when_the_current_model_cannot_be_scored(store, split) -> None:
    X_train, _, y_train, _ = split
    # A label-encoded model that never saw virginica: the holdout has labels its classes cannot map.
    two = y_train[y_train != "virginica"]
    codes = {"setosa": 0, "versicolor": 1}
    model = LogisticRegression(max_iter=1000)
    model.fit(X_train.loc[two.index].to_numpy(), two.map(codes).to_numpy())
    publish(store, "partial", model, X_train, classes=["setosa", "versicolor"], label_encoded=True)
    result = gate(store, split, 0.1)
    assert result["promoted"] is True
    assert result["current_version"] == "partial"
    assert "could not be scored" in result["reason"]


def test_auto_with_a_corrupted_current_artifact_still_decides(store, split, fitted) -> None:
    publish(store, "good", fitted, split[0])
    artifact = store.artifact_path("good")
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    result = gate(store, split, 0.5)
    assert result["promoted"] is True


# --- the worker's start: a single-model volume moves under the default name ---------------
def test_the_workers_start_moves_a_single_model_volume_without_losing_a_version(tmp_path: Path) -> None:
    from tpotserve.registry import ModelRegistry
    from tpotserve.settings import load_settings
    from tpotserve_trainer import bootstrap

    legacy = ModelStore(tmp_path / "models")  # the layout before named models
    X, y = iris_frame().drop(columns="species"), iris_frame()["species"]
    fitted = LogisticRegression(max_iter=500).fit(X, y)
    meta = {"task": "classification", "features": [{"name": c} for c in X.columns], "classes": list(fitted.classes_)}
    for version in ("v1", "v2", "v3"):
        legacy.write_version(version, lambda path: joblib.dump(fitted, path), meta)
    legacy.set_current("v1")
    legacy.set_current("v2")
    before = legacy.read_pointer()
    settings = load_settings(model_dir=tmp_path / "models", dataset_dir=tmp_path / "datasets",
                             allow_unsigned_models=True, redis_url="redis://127.0.0.1:1/0")
    # A model is current, so no bootstrap training is enqueued (and Redis is never needed).
    assert bootstrap.ensure_first_model(settings) is None
    store = ModelRegistry(settings.model_dir, None, "iris").store()
    assert store.root == tmp_path / "models" / "models" / "iris"
    assert store.list_version_ids() == ["v1", "v2", "v3"]
    assert store.read_pointer() == before  # same version, hash and previous: no worker reloads
    assert not (tmp_path / "models" / "versions").exists() and not (tmp_path / "models" / "current.json").exists()
    store.verified_artifact("v2", before.sha256)


def test_kept_live_rows_extend_the_data_set_and_misfits_are_left_out() -> None:
    import json as _json

    import pandas as _pd

    from tpotserve.schema import TrainingPayload as _Payload
    from tpotserve_trainer.data import extend_with_feedback

    X = _pd.DataFrame({"a": [0.0, 1.0, 2.0], "b": [1.0, 1.0, 0.0]})
    y = _pd.Series([0, 1, 1], name="label")
    run = _Payload(dataset="d", target="label", task="classification", max_time_mins=1, generations=1,
                   population_size=2, cv=2, scoring="accuracy", n_jobs=1, feedback_rows=4)

    def kept(features: dict, target: object) -> bytes:
        return _json.dumps({"features": features, "target": target, "version": "v1", "at": "t"}).encode()

    rows = [kept({"a": 5.0, "b": 0.5}, "1"),            # the class 1, sent as text: kept, typed like y
            kept({"a": 6.0}, 0),                        # a feature missing: left out
            kept({"a": 7.0, "b": 0.0}, 2),              # a class the data set does not have: left out
            kept({"a": 8.0, "b": 1.0}, 0),              # kept
            kept({"a": 9.0, "b": 1.0}, 1)]              # beyond the newest feedback_rows=4: not read
    X2, y2, added = extend_with_feedback(X, y, rows, run, ["0", "1"])
    assert X2["a"].tolist() == [0.0, 1.0, 2.0, 5.0, 8.0]
    assert y2.tolist() == [0, 1, 1, 1, 0] and y2.dtype == y.dtype and y2.name == "label"
    assert list(added.columns) == ["a", "b", "label"] and len(added) == 2
    regression = run.model_copy(update={"task": "regression", "scoring": "r2"})
    X3, y3, added3 = extend_with_feedback(X, y.astype(float), [kept({"a": 1.0, "b": 2.0}, float("nan")),
                                                              kept({"a": 1.0, "b": 2.0}, 3.5)], regression, None)
    assert y3.tolist() == [0.0, 1.0, 1.0, 3.5] and len(added3) == 1
