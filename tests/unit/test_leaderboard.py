"""Unit tests for what a training publishes beside its artifact: the baselines, the choice,
the leaderboard, the model card and the pipeline's export, and the API that serves them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_iris, make_classification
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_selection import SelectPercentile, f_classif
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, confusion_matrix, get_scorer
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from tpotserve.errors import ArtifactRejected, NotFound, TrainingFailed
from tpotserve.datasets import DataLimits, DatasetStore
from tpotserve.settings import load_settings
from tpotserve.store import ModelStore
from tpotserve_trainer import automl, baselines, card, export, jobs, leaderboard
from tpotserve_trainer.baselines import Candidate

from tests.unit.payloads import training_payload
from tests.unit.test_api import FEATURES, SIGNING_KEY, assert_error, make_client, make_meta  # noqa: F401 - a fixture


# --- the choice ---------------------------------------------------------------
def test_the_best_cv_score_wins_and_the_margin_is_recorded() -> None:
    chosen, record = leaderboard.choose([
        Candidate("tpot", "p", 0.91, predict_ms=0.5),
        Candidate("dummy", "d", 0.33, predict_ms=0.05),
        Candidate("hist_gradient_boosting", "h", 0.95, predict_ms=2.0),
    ])
    assert chosen.name == "hist_gradient_boosting"
    assert record["winner"] == "hist_gradient_boosting" and record["source"] == "baseline"
    assert record["runner_up"] == "tpot" and record["margin"] == pytest.approx(0.04)
    assert record["tpot_cv_score"] == 0.91 and record["best_baseline"] == "hist_gradient_boosting"
    assert record["tie"] is False and "won on CV score" in record["summary"]


def test_a_tie_goes_to_the_model_cheaper_to_serve() -> None:
    chosen, record = leaderboard.choose([
        Candidate("tpot", "p", 0.96, predict_ms=3.0),
        Candidate("linear", "l", 0.96, predict_ms=0.2),
        Candidate("dummy", "d", 0.3, predict_ms=0.01),
    ])
    assert chosen.name == "linear" and record["tie"] is True and record["margin"] == 0.0
    assert "cheaper to serve" in record["summary"]


def test_tpot_wins_a_tie_when_it_is_the_cheaper_one() -> None:
    chosen, _ = leaderboard.choose([Candidate("tpot", "p", 0.9, predict_ms=0.1),
                                    Candidate("hist_gradient_boosting", "h", 0.9, predict_ms=1.0)])
    assert chosen.name == "tpot"


def test_a_failed_baseline_is_never_chosen() -> None:
    chosen, record = leaderboard.choose([Candidate("tpot", "p", 0.5, predict_ms=1.0),
                                         Candidate("linear", None, None, error="ValueError: no")])
    assert chosen.name == "tpot" and record["runner_up"] is None
    assert record["summary"] == "tpot was the only candidate with a CV score"


def test_when_tpot_found_nothing_a_baseline_is_chosen_and_the_record_says_why() -> None:
    chosen, record = leaderboard.choose([Candidate("dummy", "d", 0.33, predict_ms=0.01),
                                         Candidate("linear", "l", 0.9, predict_ms=0.1)],
                                        tpot_failure="TPOT found no pipeline: budget ended")
    assert chosen.name == "linear" and record["tpot_cv_score"] is None
    assert record["tpot_failure"] == "TPOT found no pipeline: budget ended"
    assert record["summary"].startswith("TPOT scored no pipeline, so a baseline is published: "
                                        "linear won on CV score")


def test_no_scored_candidate_is_a_failed_training_that_names_every_reason() -> None:
    with pytest.raises(TrainingFailed) as failed:
        leaderboard.choose([Candidate("linear", None, None, error="ValueError: no")], tpot_failure="nothing")
    assert failed.value.message == "no candidate could be scored (tpot: nothing; linear: ValueError: no)"


# --- the baselines, on real data ------------------------------------------------
@pytest.fixture(scope="module")
def iris_split() -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    frame = load_iris(as_frame=True)
    X = frame.data.set_axis(FEATURES, axis=1)
    y = pd.Series(np.array(frame.target_names)[frame.target], name="species")
    order = np.random.default_rng(0).permutation(len(X))
    train, hold = order[:110], order[110:]
    return X.iloc[train], X.iloc[hold], y.iloc[train], y.iloc[hold]


def test_baselines_are_scored_on_the_shared_folds_and_the_holdout(iris_split) -> None:
    X_train, X_hold, y_train, y_hold = iris_split
    run = training_payload(cv=3)
    folds = baselines.cv_splitter(run)
    fitted = baselines.fit_baselines(run, X_train, y_train, X_hold, y_hold, folds)
    assert [b.name for b in fitted] == ["dummy", "linear", "hist_gradient_boosting"]
    # The same folds (fixed seed) give the same CV score when scored again.
    again = baselines.fit_baselines(run, X_train, y_train, X_hold, y_hold, baselines.cv_splitter(run))
    assert [b.cv_score for b in fitted] == [b.cv_score for b in again]
    for b in fitted:
        assert b.error is None and b.fit_seconds is not None and b.predict_ms > 0
        expected = accuracy_score(y_hold, b.pipeline.predict(X_hold.to_numpy()))
        assert b.holdout_score == pytest.approx(expected)
    dummy, linear, _ = fitted
    assert dummy.cv_score < 0.5 < linear.cv_score


def test_regression_baselines_are_a_mean_a_ridge_and_boosted_trees() -> None:
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    run = training_payload(task="regression", scoring="r2", cv=3, target="target")
    fitted = baselines.fit_baselines(run, X[:300], y[:300], X[300:], y[300:], baselines.cv_splitter(run))
    assert [type(b.pipeline[-1] if isinstance(b.pipeline, Pipeline) else b.pipeline).__name__ for b in fitted] == [
        "DummyRegressor", "Ridge", "HistGradientBoostingRegressor"]
    assert fitted[0].cv_score < 0.01 < fitted[1].cv_score


def test_a_baseline_that_cannot_fit_is_kept_with_its_error(iris_split) -> None:
    X_train, X_hold, y_train, y_hold = iris_split
    run = training_payload(cv=3, scoring="roc_auc")  # binary-only scorer on three classes: every fit fails
    fitted = baselines.fit_baselines(run, X_train, y_train, X_hold, y_hold, baselines.cv_splitter(run))
    assert all(b.cv_score is None and b.error for b in fitted)


# --- the leaderboard ------------------------------------------------------------
def _evaluated() -> pd.DataFrame:
    pipe = make_pipeline(StandardScaler(), LogisticRegression())
    return pd.DataFrame({
        "accuracy_score": [0.9, np.nan, 0.95, np.nan, 0.93],
        "Eval Error": [np.nan, "INVALID", np.nan, "TIMEOUT", np.nan],
        "Generation": [0, 0, 1, 1, 1],
        "Submitted Timestamp": [1.0, 1.0, 2.0, 2.0, 3.0],
        "Completed Timestamp": [1.5, 1.1, 4.0, 9.0, 3.25],
        "Instance": [pipe, pipe, pipe, pipe, LogisticRegression()],
    }, index=["a", "b", "c", "d", "e"])


def test_tpot_rows_rank_by_cv_and_count_the_failures() -> None:
    rows, counts = leaderboard.tpot_rows(_evaluated(), "accuracy_score", selected="c")
    assert [r["name"] for r in rows] == ["tpot:c", "tpot:e", "tpot:a"]
    assert counts == {"total": 5, "evaluated": 3, "invalid": 1, "timed_out": 1}
    assert rows[0]["tpot_pick"] and not rows[1]["tpot_pick"]
    assert rows[0]["eval_seconds"] == 2.0 and rows[1]["generation"] == 1
    assert rows[0]["complexity"] > rows[1]["complexity"] >= 1  # two steps vs one


def test_the_board_ranks_tpot_and_baselines_together_and_marks_the_winner() -> None:
    rows, counts = leaderboard.tpot_rows(_evaluated(), "accuracy_score", selected="c")
    pick = Candidate("tpot", make_pipeline(StandardScaler(), LogisticRegression()), 0.95, 0.9, 1.0, 0.3)
    base = [Candidate("dummy", LogisticRegression(), 0.33, 0.3, 0.01, 0.05),
            Candidate("hist_gradient_boosting", LogisticRegression(), 0.97, 0.95, 0.5, 1.0)]
    chosen, record = leaderboard.choose([pick, *base])
    board = leaderboard.build(pick, rows, counts, base, record, "accuracy", 5)
    names = [r["name"] for r in board["rows"]]
    assert names == ["hist_gradient_boosting", "tpot:c", "tpot:e", "tpot:a", "dummy"]
    assert [r["rank"] for r in board["rows"]] == [1, 2, 3, 4, 5]
    assert [r["name"] for r in board["rows"] if r["selected"]] == ["hist_gradient_boosting"]
    assert board["rows"][1]["holdout_score"] == 0.9 and board["rows"][1]["tpot_pick"]
    assert board["tpot"] == {**counts, "shown": 3, "top_k": leaderboard.TOP_K, "failure": None}
    assert board["selection"]["winner"] == "hist_gradient_boosting"


# --- a real search that found nothing ---------------------------------------------
class _FoldsTpotCannotUse:
    """Folds whose test rows do not exist: every pipeline TPOT tries fails on them."""

    def get_n_splits(self, *args, **kwargs) -> int:
        return 2

    def split(self, X, y=None, groups=None):
        for _ in range(2):
            yield np.arange(len(X)), np.array([len(X) + 10])


@pytest.fixture
def no_pipeline_from_tpot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real retrain whose TPOT search scores no pipeline: TPOT (only) is handed folds it
    cannot use, a fault injected where the search is built. Yields a payload factory."""
    for name, value in {"MODEL_DIR": tmp_path / "models", "DATASET_DIR": tmp_path / "datasets",
                        "MODEL_SIGNING_KEY": SIGNING_KEY}.items():
        monkeypatch.setenv(name, str(value))
    real = automl.build_estimator
    monkeypatch.setattr(automl, "build_estimator",
                        lambda payload, compute=None, cv=None: real(payload, compute, _FoldsTpotCannotUse()))
    X, y = make_classification(n_samples=300, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(4)]).assign(label=np.where(y, "yes", "no"))
    dataset, _ = DatasetStore(tmp_path / "datasets", DataLimits(200_000, 100, 20, 0.2)).save(
        frame.to_csv(index=False).encode())
    return lambda **extra: training_payload(model="nothing", dataset=dataset["id"], target="label",
                                            max_time_mins=0.5, cv=3, **extra).model_dump()


def test_when_tpot_scores_no_pipeline_the_best_baseline_is_published_and_says_so(no_pipeline_from_tpot) -> None:
    outcome = jobs.retrain(no_pipeline_from_tpot())
    assert outcome["published"] and outcome["selection"]["source"] == "baseline"
    assert re.fullmatch(r"TPOT scored no pipeline in its budget \((\d+) tried: \1 failed, 0 timed out, .*\)",
                        outcome["selection"]["tpot_failure"]), outcome["selection"]
    assert "TPOT scored no pipeline, so a baseline is published" in outcome["selection"]["summary"]
    board = outcome["leaderboard"]
    assert board["tpot"]["evaluated"] == 0 and board["tpot"]["total"] >= 1
    assert board["tpot"]["failure"] == outcome["selection"]["tpot_failure"]
    assert {row["source"] for row in board["rows"]} == {"baseline"}
    assert [row["name"] for row in board["rows"] if row["selected"]] == [outcome["selection"]["winner"]]
    store = jobs.registry_for(load_settings()).store("nothing")
    meta = store.read_meta(outcome["version"])
    assert meta["tpot_pipeline"] is None and meta["evaluated_pipelines"] == 0
    assert "TPOT scored no pipeline" in store.read_document(outcome["version"], "card.md").decode()
    served = joblib.load(store.artifact_path(outcome["version"]))
    assert set(served.predict(np.zeros((2, 4)))) <= {"yes", "no"}


def test_without_baselines_a_search_that_found_nothing_fails_the_training(no_pipeline_from_tpot) -> None:
    with pytest.raises(TrainingFailed, match="TPOT scored no pipeline in its budget"):
        jobs.retrain(no_pipeline_from_tpot(baselines=False))


# --- the export -----------------------------------------------------------------
NESTED = Pipeline([
    ("union", FeatureUnion([("pca", PCA(n_components=2)), ("select", SelectPercentile(f_classif, percentile=50))])),
    ("forest", RandomForestClassifier(n_estimators=7, criterion="entropy", random_state=3)),
])


def test_steps_name_classes_and_only_the_changed_parameters() -> None:
    steps = export.steps(NESTED)
    assert [s["name"] for s in steps] == ["union", "forest"]
    forest = steps[1]
    assert forest["class"] == "RandomForestClassifier" and forest["module"] == "sklearn.ensemble"
    assert forest["params"] == {"n_estimators": 7, "criterion": "entropy", "random_state": 3}
    assert [s["class"] for s in steps[0]["steps"]] == ["PCA", "SelectPercentile"]


def test_the_code_rebuilds_the_same_pipeline_and_predicts_the_same(iris_split) -> None:
    X_train, X_hold, y_train, _ = iris_split
    source, why = export.verified_code(NESTED)
    assert why is None and "from sklearn.ensemble import RandomForestClassifier" in source
    assert "<function" not in source and "0x" not in source
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - the point of the test
    rebuilt = namespace["pipeline"]
    original = NESTED.fit(X_train.to_numpy(), y_train)
    rebuilt.fit(X_train.to_numpy(), y_train)
    assert (rebuilt.predict(X_hold.to_numpy()) == original.predict(X_hold.to_numpy())).all()


def test_a_parameter_with_no_python_spelling_gives_no_code_and_says_why() -> None:
    odd = make_pipeline(SelectPercentile(lambda X, y: (X[0], X[0])))
    source, why = export.verified_code(odd)
    assert source is None and why


# --- the card ---------------------------------------------------------------------
def test_the_card_figures_are_computed_from_the_holdout(iris_split) -> None:
    X_train, X_hold, y_train, y_hold = iris_split
    run = training_payload(cv=3, description="Iris, for the test.")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X_train.to_numpy(), y_train)
    holdout = float(get_scorer("accuracy")(model, X_hold.to_numpy(), y_hold.to_numpy()))
    selection = {"winner": "linear", "source": "baseline"}
    body = card.build(run=run, pipeline=model, classes=list(model.classes_), X=pd.concat([X_train, X_hold]),
                      y=pd.concat([y_train, y_hold]), X_hold=X_hold, y_hold=y_hold, training_rows=len(X_train),
                      cv_score=0.95, holdout_score=holdout, selection=selection)
    assert body["description"] == "Iris, for the test."
    assert body["dataset"]["rows"] == 150 and body["dataset"]["holdout_rows"] == 40
    assert [f["name"] for f in body["dataset"]["features"]] == FEATURES
    assert sum(body["dataset"]["class_balance"].values()) == pytest.approx(1.0, abs=1e-3)
    low, high = body["scores"]["holdout_interval"]["low"], body["scores"]["holdout_interval"]["high"]
    assert low <= holdout <= high <= 1.0
    matrix = confusion_matrix(y_hold, model.predict(X_hold.to_numpy()), labels=list(model.classes_))
    assert body["confusion_matrix"]["matrix"] == matrix.tolist()
    importances = {row["feature"]: row for row in body["permutation_importance"]["features"]}
    assert set(importances) == set(FEATURES)
    assert max(importances, key=lambda f: importances[f]["mean"]).startswith("Petal")  # iris lives on its petals
    text = card.markdown({**body, "model": "iris", "version": "v1", "gate": {"mode": "auto", "promoted": True,
                                                                              "reason": "test"}})
    assert text.startswith("# Model card: iris v1") and "PetalLength" in text and "```python" in text


def test_the_card_of_a_regressor_summarises_its_residuals() -> None:
    X, y = load_diabetes(return_X_y=True, as_frame=True)
    run = training_payload(task="regression", scoring="r2", cv=3, target="target")
    model = make_pipeline(StandardScaler(), Ridge()).fit(X[:300].to_numpy(), y[:300])
    body = card.build(run=run, pipeline=model, classes=None, X=X, y=y, X_hold=X[300:], y_hold=y[300:],
                      training_rows=300, cv_score=0.4, holdout_score=0.4, selection={})
    errors = model.predict(X[300:].to_numpy()) - y[300:].to_numpy()
    assert body["residuals"]["mean_error"] == pytest.approx(float(errors.mean()), abs=1e-6)
    assert body["residuals"]["max_abs_error"] == pytest.approx(float(np.abs(errors).max()), abs=1e-6)
    assert "confusion_matrix" not in body and "target_range" in body["dataset"]


# --- the store keeps the documents with the version ----------------------------------
@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models" / "models" / "iris", SIGNING_KEY.encode())


@pytest.fixture
def model_and_rows(iris_split):
    X_train, _, y_train, _ = iris_split
    return LogisticRegression(max_iter=500).fit(X_train.to_numpy(), y_train), X_train.to_numpy()


def _write(store: ModelStore, version: str, model, rows, documents=None) -> dict:
    meta = make_meta(model, rows).to_json()
    return store.write_version(version, lambda path: joblib.dump(model, path), meta, documents)


def test_documents_are_hashed_into_meta_and_read_back(store, model_and_rows) -> None:
    written = _write(store, "v1", *model_and_rows, {"card.md": b"# card", "leaderboard.json": b"{}"})
    assert set(written["files"]) == {"card.md", "leaderboard.json"}
    assert store.read_document("v1", "card.md") == b"# card"
    with pytest.raises(NotFound):
        store.read_document("v1", "card.json")  # not written for this version
    with pytest.raises(NotFound):
        store.read_document("v1", "meta.json")  # not a document
    with pytest.raises(ValueError):
        _write(store, "v2", *model_and_rows, {"notes.txt": b"x"})


def test_a_tampered_document_is_refused(store, model_and_rows) -> None:
    _write(store, "v1", *model_and_rows, {"card.md": b"# card"})
    (store.versions_dir / "v1" / "card.md").write_bytes(b"# forged")
    with pytest.raises(ArtifactRejected):
        store.read_document("v1", "card.md")


# --- the API -------------------------------------------------------------------------
@pytest.fixture
def documented(store, model_and_rows, make_client):
    card_json = {"model": "iris", "version": "v1", "scores": {"holdout": 0.97}}
    board = {"model": "iris", "version": "v1", "rows": [{"rank": 1, "name": "linear"}]}
    _write(store, "v1", *model_and_rows, {"card.md": b"# Model card: iris v1\n", "card.json": json.dumps(card_json).encode(),
                                          "leaderboard.json": json.dumps(board).encode()})
    store.set_current("v1")
    _write(store, "v0", *model_and_rows)  # written before versions had documents
    return make_client(), card_json, board


def test_the_api_serves_the_leaderboard_and_the_card_in_both_formats(documented) -> None:
    client, card_json, board = documented
    resp = client.get("/models/iris/versions/v1/leaderboard")
    assert resp.status_code == 200 and resp.get_json() == board and resp.headers["X-Model-Version"] == "v1"
    resp = client.get("/models/iris/versions/v1/card")
    assert resp.status_code == 200 and resp.mimetype == "text/markdown"
    assert resp.get_data(as_text=True).startswith("# Model card: iris v1")
    assert client.get("/models/iris/versions/v1/card?format=json").get_json() == card_json
    assert client.get("/models/iris/versions/v1/card", headers={"Accept": "application/json"}).get_json() == card_json
    current = client.get("/models/iris/versions/current/card?format=json")
    assert current.get_json() == card_json and current.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("url, status, code, field", [
    ("/models/nosuch/versions/v1/card", 404, "not_found", "model"),
    ("/models/iris/versions/v9/card", 404, "not_found", "version"),
    ("/models/iris/versions/v9/leaderboard", 404, "not_found", "version"),
    ("/models/iris/versions/v0/card", 404, "not_found", "version"),
    ("/models/iris/versions/v0/leaderboard", 404, "not_found", "version"),
    ("/models/iris/versions/..%2Fv1/card", 404, "not_found", ...),
    ("/models/iris/versions/v1/card?format=html", 422, "invalid_input", "format"),
])
def test_bad_document_requests_are_clear_json_errors(documented, url, status, code, field) -> None:
    client, _, _ = documented
    error = assert_error(client.get(url), status, code, field)
    assert len(error["message"]) < 200
