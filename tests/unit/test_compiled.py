"""Compiled inference (issue 22): the trainer's ONNX conversion and the API's check at load.

Real scikit-learn, skl2onnx and ONNX Runtime throughout. The stock conversions that are
silently wrong are built with skl2onnx's own converters and must be refused by the very check
the API makes at load (``tpotserve_api.compiled.verify`` on ``tpotserve.compiled.verification_rows``);
the converters written for what skl2onnx lacks must give a graph that passes it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.cluster import FeatureAgglomeration
from sklearn.datasets import load_diabetes, load_iris
from sklearn.decomposition import FastICA
from sklearn.ensemble import (
    AdaBoostRegressor,
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.feature_selection import RFE, SelectFromModel
from sklearn.kernel_approximation import Nystroem, RBFSampler
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline, make_union
from sklearn.preprocessing import KBinsDiscretizer, Normalizer, StandardScaler
from tpot.builtin_modules import (
    ColumnOneHotEncoder,
    ColumnOrdinalEncoder,
    EstimatorTransformer,
    Passthrough,
    SkipTransformer,
    ZeroCount,
)
from xgboost import XGBClassifier

from tpotserve.compiled import PROBA_ATOL, verification_rows
from tpotserve.model_meta import ModelMeta
from tpotserve.registry import ModelRegistry
from tpotserve_api import metrics
from tpotserve_api.compiled import CompiledEngine, load_engine, new_session, verify
from tpotserve_api.model_holder import ModelHolder
from tpotserve_trainer.compiler import compile_pipeline, convert, output_names

KEY = b"k" * 32


def meta_for(X: np.ndarray, classes: list[Any] | None) -> ModelMeta:
    return ModelMeta(
        task="classification" if classes is not None else "regression",
        classes=classes,
        features=[{"name": f"f{i}", "min": float(X[:, i].min()), "max": float(X[:, i].max())}
                  for i in range(X.shape[1])],
    )


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    return load_iris(return_X_y=True)


def engine_for(onx: Any, meta: ModelMeta) -> CompiledEngine:
    session = new_session(onx.SerializeToString())
    dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32
    return CompiledEngine(session, session.get_inputs()[0].name, dtype, output_names(onx, meta), "test")


def stock(model: Any, n_features: int, double: bool = False) -> Any:
    """skl2onnx's own conversion, without this project's converters (ZipMap off)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    kind = DoubleTensorType if double else FloatTensorType
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_sklearn(model, initial_types=[("X", kind([None, n_features]))],
                               options={id(model[-1]): {"zipmap": False}}, target_opset={"": 18, "ai.onnx.ml": 3})


# --- the silently wrong conversions are caught -------------------------------------------
def test_stock_normalizer_max_is_refused(iris) -> None:
    """skl2onnx divides by max(x), not max(|x|): right for iris' positive rows, wrong for a row
    whose largest magnitude is negative -- the verification rows hold such rows."""
    X, y = iris
    model = make_pipeline(Normalizer(norm="max"), LogisticRegression(max_iter=1000)).fit(X, y)
    meta = meta_for(X, [0, 1, 2])
    engine = engine_for(stock(model, 4), meta)
    assert verify(engine, model, meta, X).ok  # the training rows alone would not show it
    verdict = verify(engine, model, meta, verification_rows(meta, model))
    assert not verdict.ok and "differ" in verdict.reason


def test_stock_k_neighbors_on_distance_ties_is_refused() -> None:
    """Integer features: many training points at one distance; ONNX's TopK and scikit-learn
    pick different ones among equals. The grid rows (on the training values' decimals) hit them."""
    rng = np.random.default_rng(1)
    X = rng.integers(0, 4, size=(60, 2)).astype(float)
    y = rng.integers(0, 3, size=60)
    model = make_pipeline(KNeighborsClassifier(5)).fit(X, y)
    meta = meta_for(X, [0, 1, 2])
    for double in (False, True):
        verdict = verify(engine_for(stock(model, 2, double), meta), model, meta, verification_rows(meta, model))
        assert not verdict.ok, verdict
    raw, record = compile_pipeline(model, meta)
    assert raw is None and "labels differ" in record["reason"]


def test_stock_k_bins_at_float32_edges_is_refused(iris) -> None:
    """In float32 a value just below a bin edge (in float64) lands on the edge: the next bin.
    The verification rows probe every edge of a first-step KBinsDiscretizer, one float64 step
    either side."""
    X, y = iris
    model = make_pipeline(KBinsDiscretizer(n_bins=5, encode="ordinal", strategy="quantile"),
                          LogisticRegression(max_iter=1000)).fit(X, y)
    meta = meta_for(X, [0, 1, 2])
    engine = engine_for(stock(model, 4), meta)
    verdict = verify(engine, model, meta, verification_rows(meta, model))
    assert not verdict.ok and "differ" in verdict.reason


def test_float32_preprocessing_before_trees_is_refused(iris) -> None:
    """All-float32: the scaler's output rounds differently from scikit-learn's float64 one and
    flips tree votes; the mixed graph (float64, cast before the trees) is kept instead."""
    X, y = iris
    model = make_pipeline(StandardScaler(), RandomForestClassifier(50, random_state=0)).fit(X, y)
    meta = meta_for(X, [0, 1, 2])
    verdict = verify(engine_for(convert(model, 4, "float32"), meta), model, meta, verification_rows(meta, model))
    assert not verdict.ok
    raw, record = compile_pipeline(model, meta)
    assert raw is not None and record["precision"] == "mixed"
    assert record["max_difference"] <= PROBA_ATOL


def test_the_verifier_refuses_a_graph_of_another_model(iris) -> None:
    X, y = iris
    model = make_pipeline(LogisticRegression(max_iter=1000)).fit(X, y)
    other = make_pipeline(LogisticRegression(C=0.01, max_iter=1000)).fit(X, y)
    meta = meta_for(X, [0, 1, 2])
    verdict = verify(engine_for(convert(other, 4), meta), model, meta, verification_rows(meta, model))
    assert not verdict.ok


# --- what is compiled, with this project's converters ------------------------------------
CLASSIFIERS = {
    "passthrough-skip-zerocount": lambda: make_pipeline(make_union(Passthrough(), SkipTransformer(), ZeroCount()),
                                                        ExtraTreesClassifier(30, random_state=0)),
    "estimator-transformer": lambda: make_pipeline(
        make_union(EstimatorTransformer(LogisticRegression(max_iter=1000)), Passthrough()),
        RandomForestClassifier(20, random_state=0)),
    "estimator-transformer-passthrough": lambda: make_pipeline(
        EstimatorTransformer(RandomForestClassifier(10, random_state=0), passthrough=True),
        LogisticRegression(max_iter=1000)),
    "column-one-hot": lambda: make_pipeline(ColumnOneHotEncoder(columns=[3]), LogisticRegression(max_iter=1000)),
    "column-ordinal": lambda: make_pipeline(
        ColumnOrdinalEncoder(columns=[3], handle_unknown="use_encoded_value", unknown_value=-1),
        LogisticRegression(max_iter=1000)),
    "fast-ica-mlp": lambda: make_pipeline(FastICA(random_state=0),
                                          MLPClassifier((20,), max_iter=500, random_state=0)),
    "rbf-sampler": lambda: make_pipeline(RBFSampler(random_state=0), LogisticRegression(max_iter=1000)),
    "feature-agglomeration": lambda: make_pipeline(FeatureAgglomeration(n_clusters=2),
                                                   LogisticRegression(max_iter=1000)),
    "nystroem": lambda: make_pipeline(Nystroem(n_components=20, random_state=0), LogisticRegression(max_iter=1000)),
    "normalizer-max": lambda: make_pipeline(Normalizer(norm="max"), LogisticRegression(max_iter=1000)),
    "scaled-forest": lambda: make_pipeline(StandardScaler(), RandomForestClassifier(50, random_state=0)),
    "xgboost": lambda: make_pipeline(XGBClassifier(n_estimators=20, max_depth=3)),
    "rfe-around-a-classifier": lambda: make_pipeline(RFE(LogisticRegression(max_iter=1000), n_features_to_select=2),
                                                     XGBClassifier(n_estimators=10, max_depth=3)),
    "select-from-model": lambda: make_pipeline(SelectFromModel(ExtraTreesClassifier(10, random_state=0)),
                                               RandomForestClassifier(10, random_state=0)),
    "hist-gradient-boosting": lambda: make_pipeline(HistGradientBoostingClassifier(max_iter=10)),
}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_a_pipeline_compiles_and_the_api_verifies_it(name: str, iris) -> None:
    X, y = iris
    model = CLASSIFIERS[name]().fit(X, y)
    meta = meta_for(X, [0, 1, 2])
    raw, record = compile_pipeline(model, meta)
    assert raw is not None, record["reason"]
    assert record["reason"] is None and record["outputs"]["probabilities"]
    assert record["precision"] == "mixed", record.get("rejected")
    engine, info = load_engine(raw, record, model, meta, lambda rows: model.predict_proba(rows))
    assert "fallback" not in info or info["fallback"] == "slower", info
    session = new_session(raw)
    kind = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32
    proba = session.run([record["outputs"]["probabilities"]], {"X": X.astype(kind)})[0]
    assert np.array_equal(proba.argmax(axis=1), model.predict_proba(X).argmax(axis=1))
    assert np.abs(proba - model.predict_proba(X)).max() <= PROBA_ATOL


def test_a_regressor_compiles_in_mixed_precision() -> None:
    X, y = load_diabetes(return_X_y=True)
    model = make_pipeline(AdaBoostRegressor(n_estimators=30, random_state=0)).fit(X, y)
    meta = meta_for(X, None)
    raw, record = compile_pipeline(model, meta)
    assert raw is not None and record["precision"] == "mixed"
    engine, info = load_engine(raw, record, model, meta, lambda rows: model.predict(rows))
    assert info["compiled"]["verified_rows"] > 100


def test_an_uncompilable_pipeline_records_why(iris) -> None:
    X, y = iris
    model = make_pipeline(ColumnOneHotEncoder(columns=[3], handle_unknown="error"),
                          LogisticRegression(max_iter=1000)).fit(X, y)
    raw, record = compile_pipeline(model, meta_for(X, [0, 1, 2]))
    assert raw is None and record["file"] is None
    assert "handle_unknown='error'" in record["reason"]


# --- the store and the API's load ----------------------------------------------------------
def publish(root: Path, model: Any, meta: ModelMeta, raw: bytes | None, record: dict | None,
            version: str = "v1", key: bytes | None = KEY) -> ModelRegistry:
    registry = ModelRegistry(root, key, "iris")
    store = registry.store("iris")
    documents = {}
    body = meta.to_json()
    if record is not None:
        record = dict(record)
        if raw is not None:
            record.update(sha256=hashlib.sha256(raw).hexdigest(), signature=store.sign(raw))
            documents["model.onnx"] = raw
        body["compiled"] = record
    store.write_version(version, lambda path: joblib.dump(model, path), body, documents)
    store.set_current(version)
    return registry


@pytest.fixture()
def rbf(iris) -> tuple[Any, ModelMeta, bytes, dict]:
    X, y = iris
    model = make_pipeline(RBFSampler(random_state=0), LogisticRegression(max_iter=1000)).fit(X, y)
    meta = meta_for(X, ["setosa", "versicolor", "virginica"])
    raw, record = compile_pipeline(model, meta)
    assert raw is not None
    return model, meta, raw, record


def test_a_worker_serves_one_row_with_the_compiled_engine(tmp_path: Path, rbf, iris) -> None:
    model, meta, raw, record = rbf
    holder = ModelHolder(publish(tmp_path, model, meta, raw, record), "iris")
    assert holder.refresh()
    loaded = holder.current()
    assert loaded.serving["engine"] == "onnxruntime", loaded.serving
    assert loaded.compiled is not None and loaded.compiled.max_rows >= 1
    X = iris[0]
    before = metrics.ENGINE_REQUESTS.labels("iris", "onnxruntime")._value.get()
    labels, proba = loaded.infer(X[:1])
    assert metrics.ENGINE_REQUESTS.labels("iris", "onnxruntime")._value.get() == before + 1
    want_labels, want = loaded.infer_pipeline(X[:1])
    assert labels == want_labels and np.abs(proba - want).max() <= PROBA_ATOL
    # Beyond float32's range: the pipeline's own path (its answer or its refusal).
    huge = np.full((1, 4), 1e39)
    assert loaded.infer(huge)[0] == loaded.infer_pipeline(huge)[0]


def test_large_requests_take_the_pipeline_path_beyond_max_rows(tmp_path: Path, rbf, iris) -> None:
    model, meta, raw, record = rbf
    holder = ModelHolder(publish(tmp_path, model, meta, raw, record), "iris")
    holder.refresh()
    loaded = holder.current()
    loaded.compiled.max_rows = 10
    before = metrics.ENGINE_REQUESTS.labels("iris", "scikit-learn")._value.get()
    labels, proba = loaded.infer(iris[0][:11])
    assert metrics.ENGINE_REQUESTS.labels("iris", "scikit-learn")._value.get() == before + 1
    assert np.array_equal(proba, model.predict_proba(iris[0][:11]))


def test_a_tampered_compiled_form_is_refused_and_the_version_still_served(tmp_path: Path, rbf) -> None:
    model, meta, raw, record = rbf
    registry = publish(tmp_path, model, meta, raw, record)
    (tmp_path / "models" / "iris" / "versions" / "v1" / "model.onnx").write_bytes(raw[:-1] + b"\x00")
    before = metrics.COMPILED_FALLBACKS.labels("iris", "rejected")._value.get()
    holder = ModelHolder(registry, "iris")
    assert holder.refresh()
    loaded = holder.current()
    assert loaded.compiled is None and loaded.serving["fallback"] == "rejected"
    assert "sha256" in loaded.serving["reason"]
    assert metrics.COMPILED_FALLBACKS.labels("iris", "rejected")._value.get() == before + 1


def test_a_compiled_form_signed_with_another_key_is_refused(tmp_path: Path, rbf) -> None:
    model, meta, raw, record = rbf
    publish(tmp_path, model, meta, raw, record, key=b"x" * 32)
    # Same artifact signature check would refuse the artifact too; re-sign it with KEY only.
    store = ModelRegistry(tmp_path, KEY, "iris").store("iris")
    meta_path = tmp_path / "models" / "iris" / "versions" / "v1" / "meta.json"
    body = json.loads(meta_path.read_text())
    body["signature"] = store.sign((meta_path.parent / "model.joblib").read_bytes())
    meta_path.write_text(json.dumps(body))
    holder = ModelHolder(ModelRegistry(tmp_path, KEY, "iris"), "iris")
    assert holder.refresh()
    assert holder.current().serving["fallback"] == "rejected"
    assert "signature" in holder.current().serving["reason"]


def test_a_version_without_a_compiled_form_is_served_as_before(tmp_path: Path, rbf, iris) -> None:
    model, meta, _, _ = rbf
    holder = ModelHolder(publish(tmp_path, model, meta, None, None), "iris")
    holder.refresh()
    loaded = holder.current()
    assert loaded.compiled is None and loaded.serving["fallback"] == "not_compiled"
    assert np.array_equal(loaded.infer(iris[0][:3])[1], model.predict_proba(iris[0][:3]))


def test_a_recorded_reason_is_shown(tmp_path: Path, rbf) -> None:
    model, meta, _, _ = rbf
    holder = ModelHolder(publish(tmp_path, model, meta, None, {"file": None, "reason": "no converter for X"}), "iris")
    holder.refresh()
    assert holder.current().serving == {"engine": "scikit-learn", "fallback": "not_compilable",
                                        "reason": "no converter for X",
                                        "pipeline_path": holder.current().serving["pipeline_path"]}


def test_a_wrong_graph_is_refused_at_load(tmp_path: Path, rbf, iris) -> None:
    """A graph that hashes and signs fine but answers differently (another model's) is not used."""
    model, meta, _, _ = rbf
    X, y = iris
    other = make_pipeline(RBFSampler(random_state=1), LogisticRegression(max_iter=1000)).fit(X, y)
    raw, record = compile_pipeline(other, meta)
    holder = ModelHolder(publish(tmp_path, model, meta, raw, record), "iris")
    holder.refresh()
    serving = holder.current().serving
    assert serving["fallback"] == "verification_failed" and "verification rows" in serving["reason"]


def test_compile_adds_a_side_document_to_an_old_version(tmp_path: Path, rbf) -> None:
    """``tpotserve compile``: model.onnx and compiled.json beside an old version; its meta.json
    (so its sha256 and signature) unchanged, and the API serves it compiled."""
    model, meta, raw, record = rbf
    registry = publish(tmp_path, model, meta, None, None)
    store = registry.store("iris")
    meta_before = (tmp_path / "models" / "iris" / "versions" / "v1" / "meta.json").read_bytes()
    written = store.add_compiled("v1", raw, record)
    assert written["artifact_sha256"] == store.read_meta("v1")["sha256"]
    assert (tmp_path / "models" / "iris" / "versions" / "v1" / "meta.json").read_bytes() == meta_before
    holder = ModelHolder(registry, "iris")
    holder.refresh()
    assert holder.current().serving["engine"] == "onnxruntime"
    from tpotserve.errors import Conflict

    with pytest.raises(Conflict):
        store.add_compiled("v1", raw, record)


def test_the_compile_command_compiles_old_versions_once(tmp_path: Path, rbf) -> None:
    from tpotserve_trainer.compile_versions import compile_store

    model, meta, _, _ = rbf
    registry = publish(tmp_path, model, meta, None, None)
    assert compile_store(registry, dry_run=True) == [{"model": "iris", "version": "v1", "outcome": "would compile"}]
    [outcome] = compile_store(registry)
    assert outcome["outcome"] == "compiled" and outcome["precision"] == "mixed"
    assert compile_store(registry)[0]["outcome"].startswith("already compiled")
    holder = ModelHolder(registry, "iris")
    holder.refresh()
    assert holder.current().serving["engine"] == "onnxruntime"


def test_a_side_document_of_another_artifact_is_refused(tmp_path: Path, rbf) -> None:
    model, meta, raw, record = rbf
    registry = publish(tmp_path, model, meta, None, None)
    directory = tmp_path / "models" / "iris" / "versions" / "v1"
    store = registry.store("iris")
    store.add_compiled("v1", raw, record)
    sidecar = json.loads((directory / "compiled.json").read_text())
    (directory / "compiled.json").write_text(json.dumps({**sidecar, "artifact_sha256": "0" * 64}))
    holder = ModelHolder(registry, "iris")
    holder.refresh()
    assert holder.current().serving["fallback"] == "rejected"
    assert "not compiled from this version's artifact" in holder.current().serving["reason"]


class NoConverter(LogisticRegression):
    """A classifier skl2onnx has no converter for."""


def test_a_step_without_a_converter_is_published_uncompiled_with_the_reason(iris) -> None:
    X, y = iris
    model = make_pipeline(StandardScaler(), NoConverter(max_iter=1000)).fit(X, y)
    raw, record = compile_pipeline(model, meta_for(X, [0, 1, 2]))
    assert raw is None and record["file"] is None
    assert "NoConverter" in record["reason"]


def test_compiled_inference_can_be_switched_off(tmp_path: Path, rbf) -> None:
    model, meta, raw, record = rbf
    holder = ModelHolder(publish(tmp_path, model, meta, raw, record), "iris", compiled_inference=False)
    holder.refresh()
    assert holder.current().compiled is None and holder.current().serving["fallback"] == "disabled"


@pytest.mark.parametrize("step", [lambda: KBinsDiscretizer(n_bins=5, encode="ordinal"),
                                  lambda: KBinsDiscretizer(n_bins=7, encode="onehot-dense", strategy="uniform")],
                         ids=["ordinal", "onehot-dense"])
def test_k_bins_compiles_exactly_in_mixed_precision(step, iris) -> None:
    """This project's KBinsDiscretizer converter compares with the edges in float64, as
    scikit-learn does, so it passes the very rows the stock one fails on."""
    X, y = iris
    model = make_pipeline(step(), LogisticRegression(max_iter=1000)).fit(X, y)
    raw, record = compile_pipeline(model, meta_for(X, [0, 1, 2]))
    assert raw is not None and record["precision"] == "mixed", record
    # The stock converter is still skl2onnx's own outside a conversion (the tests above use it).
    meta = meta_for(X, [0, 1, 2])
    assert not verify(engine_for(stock(model, 4), meta), model, meta, verification_rows(meta, model)).ok


def test_tpots_pass_k_bins_discretizer_compiles(iris) -> None:
    from tpot.builtin_modules import PassKBinsDiscretizer

    X, y = iris
    X = np.column_stack([X, np.random.default_rng(0).integers(0, 3, len(X))])  # a column passed through
    model = make_pipeline(PassKBinsDiscretizer(n_bins=6), LogisticRegression(max_iter=1000)).fit(X, y)
    raw, record = compile_pipeline(model, meta_for(X, [0, 1, 2]))
    assert raw is not None and record["precision"] == "mixed", record


class _Timed:
    """An engine stand-in whose run takes a given time per size (the choice's arithmetic only)."""

    def __init__(self, costs: dict[int, float]) -> None:
        self.costs = costs

    def run(self, X: np.ndarray) -> None:
        _sleep(self.costs[len(X)])


def _sleep(seconds: float) -> None:
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.parametrize(("compiled", "pipeline", "expected"), [
    ({1: 1e-4, 1000: 1e-3, 10_000: 1e-2}, {1: 1e-3, 1000: 2e-3, 10_000: 2e-2}, 1 << 30),  # faster everywhere
    ({1: 2e-3, 1000: 1e-3, 10_000: 1e-2}, {1: 1e-3, 1000: 2e-3, 10_000: 2e-2}, 0),        # slower at one row
    ({1: 1e-4, 1000: 1e-3, 10_000: 3e-2}, {1: 1e-3, 1000: 2e-3, 10_000: 2e-2}, 1000),     # crosses after 1,000
])
def test_the_engine_size_choice_follows_the_timings(compiled, pipeline, expected) -> None:
    from tpotserve_api.compiled import choose_sizes

    rows = np.zeros((3, 2))
    max_rows, timings = choose_sizes(_Timed(compiled), lambda X: _sleep(pipeline[len(X)]), rows)
    if expected == 1000:
        assert 1000 <= max_rows < 10_000, timings  # between the sizes, by interpolation
    else:
        assert max_rows == expected, timings


def test_the_cli_compile_command_runs_on_the_volume(tmp_path: Path, rbf, monkeypatch, capsys) -> None:
    from tpotserve_cli.main import main

    model, meta, _, _ = rbf
    publish(tmp_path, model, meta, None, None)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("MODEL_SIGNING_KEY", KEY.decode())
    assert main(["compile"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line) == {"model": "iris", "version": "v1", "outcome": "compiled", "precision": "mixed",
                                "max_difference": json.loads(line)["max_difference"]}
    assert (tmp_path / "models" / "iris" / "versions" / "v1" / "compiled.json").exists()


def test_an_onnx_runtime_failure_is_answered_by_the_pipeline(tmp_path: Path, rbf, iris) -> None:
    model, meta, raw, record = rbf
    holder = ModelHolder(publish(tmp_path, model, meta, raw, record), "iris")
    holder.refresh()
    loaded = holder.current()
    loaded.compiled.input_name = "no-such-input"  # ONNX Runtime refuses the feed for real
    labels, proba = loaded.infer(iris[0][:2])
    assert np.array_equal(proba, model.predict_proba(iris[0][:2]))
