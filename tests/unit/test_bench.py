"""The predict path's shortcuts answer exactly as the code they shortcut, and the
benchmark's own arithmetic (bench/) is right.

The shortcuts (tpotserve_api.predict_request: orjson parsing, plain rows, the range check;
tpotserve_api.fast_path: the direct tree sum, scaler arithmetic, unchecked
finite input) each fall back to the original code at the first doubt. These
tests compare both on the cases that decide: every malformed value, key and
shape, numbers at the edges of float64 and float32, integers beyond 64 bits.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier
from sklearn.feature_selection import SelectKBest, VarianceThreshold
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import MinMaxScaler, Normalizer, PolynomialFeatures, StandardScaler

from bench import run as bench_run
from bench.micro import batch_rows
from tpotserve.errors import InvalidInput, MalformedBody
from tpotserve.model_meta import ModelMeta
from tpotserve.store import Pointer
from tpotserve_api import predict_request
from tpotserve_api.fast_path import compile_fast_proba, pin_single_thread
from tpotserve_api.loaded_model import LoadedModel

FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
BOOK = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}


# --- parse_json: orjson first, json's result and errors ---------------------------------
def reference_parse_json(raw: bytes) -> Any:
    """parse_json as it was: the standard library only."""
    if not raw:
        raise MalformedBody("the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody("the request body is not UTF-8") from exc
    try:
        return json.loads(text, parse_constant=predict_request._reject_constant)
    except RecursionError as exc:
        raise MalformedBody("the JSON body is nested too deeply") from exc
    except ValueError as exc:
        raise MalformedBody(f"the request body is not valid JSON: {exc}") from exc


def outcome(fn: Any, *args: Any) -> tuple:
    """What a call gives: ('ok', value) or ('error', type, message, field)."""
    try:
        value = fn(*args)
    except (InvalidInput, MalformedBody) as exc:
        return ("error", type(exc).__name__, exc.message, exc.field)
    return ("ok", repr(value))


JSON_CASES = [
    b'{"a": 1, "a": 2}',
    b"1e999",
    b'{"a": -1e999}',
    b'{"a": 1e400}',
    b'"\\ud800"',
    b"18446744073709551616",
    b"18446744073709551615",
    b"-9223372036854775809",
    b"-9223372036854775808",
    b'{"a": 12345678901234567890}',
    b'{"a": 0.12345678901234567890123}',
    b"-0",
    b"-0.0",
    b"1.7976931348623157e308",
    b"4.9e-324",
    b"1e-400",
    b"\xef\xbb\xbf{}",
    b"NaN",
    b'{"a": Infinity}',
    b"[1, 2, -Infinity]",
    b"{",
    b'{"a": 1,}',
    b"{'a': 1}",
    b'{"a": 1} trailing',
    b"   ",
    b"[]",
    b"{}",
    b"null",
    b"true",
    b'"x"',
    b'{"a": "\xff"}',
    '{"a": "é"}'.encode(),
    '{"a": "é"}'.encode("latin-1"),
    b'{"a": "\\u0000"}',
    b'{"a": "tab\there"}',
    b"[" * 2000 + b"]" * 2000,
    b'{"a":' * 1500 + b"1" + b"}" * 1500,
    b"[" * 100_000,
    b'{"a": 9' + b"9" * 5000 + b"}",
    b'{"instances": [{"x": 1.5}, {"x": 2}]}',
    b'{"x": 1E2, "y": 1e+2, "z": -1.0E-2}',
]


@pytest.mark.parametrize("raw", JSON_CASES, ids=[repr(c[:24]) for c in JSON_CASES])
def test_parse_json_matches_the_standard_parser(raw: bytes) -> None:
    assert outcome(predict_request.parse_json, raw) == outcome(reference_parse_json, raw)


def test_parse_json_matches_on_a_real_batch() -> None:
    raw = json.dumps({"instances": batch_rows(2000)}).encode()
    assert predict_request.parse_json(raw) == reference_parse_json(raw)


# --- parse_predict: plain rows, else _row's exact errors --------------------------------
def reference_parse_predict(body: Any, names: list[str], max_rows: int) -> predict_request.PredictRequest:
    """parse_predict with _row for every instance, as it was."""
    return predict_request.parse_predict(body, names, max_rows, shortcut=False)


def predict_outcome(fn: Any, body: Any, names: list[str]) -> tuple:
    try:
        parsed = fn(body, names, 50)
    except InvalidInput as exc:
        return ("error", exc.message, exc.field)
    # Same rows, and the same types in them (floats, never ints or bools).
    return ("ok", parsed.rows, [[type(v).__name__ for v in row] for row in parsed.rows], parsed.single)


class Numpyish(float):
    """A float subclass (numpy's float64 is one): the plain path leaves it to _row."""


ODD_VALUES = [
    0.2,
    3,
    0,
    -0.0,
    True,
    False,
    None,
    "0.2",
    [0.2],
    {"v": 1},
    float("inf"),
    float("-inf"),
    float("nan"),
    10**400,
    -(10**400),
    2**70,
    1e308,
    -1e308,
    1.7976931348623157e308,
    5e-324,
    Numpyish(0.5),
    np.float64(0.5),
]


def mutations(rng: random.Random) -> list[Any]:
    """Single and batch bodies, each with zero or more of the things parse_predict refuses."""
    bodies: list[Any] = [dict(BOOK), {"instances": [dict(BOOK)]}, {"instances": [dict(BOOK)] * 3}]
    for value in ODD_VALUES:
        for name in FEATURES:
            bodies.append({**BOOK, name: value})
            bodies.append({"instances": [dict(BOOK), {**BOOK, name: value}, {**BOOK, name: 1e308}]})
    for _ in range(300):
        n = rng.randint(1, 4)
        instances: list[Any] = []
        for _ in range(n):
            item: Any = {name: rng.choice([rng.uniform(-10, 10), rng.randint(-5, 5)]) for name in FEATURES}
            roll = rng.random()
            if roll < 0.1:
                item.pop(rng.choice(FEATURES))
            elif roll < 0.2:
                item["Colour"] = 1.0
            elif roll < 0.3:
                item[rng.choice(FEATURES)] = rng.choice(ODD_VALUES)
            elif roll < 0.35:
                item = rng.choice([[1.0, 2.0], "row", None, 3])
            elif roll < 0.4:
                item = dict(reversed(list(item.items())))
            instances.append(item)
        bodies.append({"instances": instances} if rng.random() < 0.7 else instances[0])
    bodies += [
        {},
        {"instances": []},
        {"instances": "x"},
        {"instances": [BOOK], "x": 1},
        [],
        "x",
        None,
        {"instances": [dict(BOOK)] * 51},
        {"instances": [1e308] * 2},
    ]
    return bodies


def test_parse_predict_matches_row_by_row_checking() -> None:
    rng = random.Random(7)
    for body in mutations(rng):
        for names in (FEATURES, FEATURES[:1], ["a", "a"], []):
            assert predict_outcome(predict_request.parse_predict, body, names) == predict_outcome(
                reference_parse_predict, body, names
            ), body


def test_values_beyond_float32_are_refused_naming_the_field() -> None:
    # Within float32: accepted, even where the values' sum would overflow a float32.
    parsed = predict_request.parse_predict({"instances": [{n: 3e38 for n in FEATURES}] * 2}, FEATURES, 10)
    assert parsed.rows == [[3e38] * 4] * 2
    with pytest.raises(predict_request.InvalidInput) as info:
        predict_request.parse_predict({"instances": [{n: 1.7e308 for n in FEATURES}] * 2}, FEATURES, 10)
    assert info.value.field == f"instances[0].{FEATURES[0]}"


# --- range_warnings: the column check agrees with the value-by-value loop --------------
def test_range_warnings_match_the_loop() -> None:
    rng = random.Random(3)
    features = [{"name": n, "min": 1.0, "max": 3.0} for n in FEATURES[:3]] + [{"name": "PetalWidth"}]
    cases = [
        [],
        [[2.0, 2.0, 2.0, 99.0]],
        [[0.0, 2.0, 4.0, 0.0]],
        [[2.0, 2.0]],
        [[2.0] * 5],
        [[float("nan"), 0.0, 2, 2]],
    ]
    for _ in range(200):
        cases.append(
            [[rng.uniform(-1, 5) for _ in range(rng.choice([4, 4, 4, 3]))] for _ in range(rng.randint(1, 6))]
        )
    for rows in cases:
        for single in (True, False):
            assert predict_request.range_warnings(rows, features, single=single) == predict_request.value_by_value_range_warnings(
                rows, features, single=single
            ), rows


# --- the model holder's shortcut ------------------------------------------------------------
@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_iris()
    return bunch.data, np.array([str(bunch.target_names[i]) for i in bunch.target])


def meta_for(X: np.ndarray, classes: list[str]) -> ModelMeta:
    return ModelMeta(
        task="classification",
        features=[
            {"name": n, "type": "number", "min": float(X[:, i].min()), "max": float(X[:, i].max())}
            for i, n in enumerate(FEATURES)
        ],
        classes=classes,
    )


FAST_MODELS = {
    "scaled-forest": lambda: Pipeline(
        [("s", StandardScaler()), ("f", RandomForestClassifier(30, random_state=0))]
    ),
    "minmax-extra-trees": lambda: Pipeline(
        [("s", MinMaxScaler()), ("f", ExtraTreesClassifier(20, random_state=0))]
    ),
    "bare-forest": lambda: RandomForestClassifier(10, random_state=0, n_jobs=2),
    "poly-forest": lambda: Pipeline(
        [("p", PolynomialFeatures(2)), ("f", RandomForestClassifier(10, random_state=0))]
    ),
}


@pytest.mark.parametrize("name", sorted(FAST_MODELS))
def test_the_direct_tree_sum_is_bit_identical_to_predict_proba(name: str, iris) -> None:
    X, y = iris
    model = FAST_MODELS[name]().fit(X, y)
    pin_single_thread(model)
    fast, how = compile_fast_proba(model, meta_for(X, list(model.classes_)))
    assert fast is not None, how
    rng = np.random.default_rng(1)
    for rows in (X, X[:1], rng.uniform(-50, 50, size=(500, 4)), rng.normal(5, 3, size=(3, 4))):
        assert np.array_equal(fast(rows), model.predict_proba(rows))
    loaded = LoadedModel(Pointer("v", "s"), meta_for(X, list(model.classes_)), model, fast_proba=fast)
    plain = LoadedModel(Pointer("v", "s"), meta_for(X, list(model.classes_)), model)
    assert loaded.predict(X[:7].tolist()) == plain.predict(X[:7].tolist())


def test_beyond_float32_the_shortcut_leaves_it_to_scikit_learn(iris) -> None:
    X, y = iris
    model = FAST_MODELS["scaled-forest"]().fit(X, y)
    fast, _ = compile_fast_proba(model, meta_for(X, list(model.classes_)))
    huge = np.full((1, 4), 1e39)
    assert fast(huge) is None
    loaded = LoadedModel(Pointer("v", "s"), meta_for(X, list(model.classes_)), model, fast_proba=fast)
    with pytest.raises(ValueError) as shortcut:
        loaded.predict(huge.tolist())
    with pytest.raises(ValueError) as original:
        model.predict_proba(huge)
    assert str(shortcut.value) == str(original.value)


def tpot_like_pipeline() -> Pipeline:
    """The shape of the trainer's iris pipeline: TPOT's no-op steps inside FeatureUnions."""
    from tpotserve.offline import disable_tpot_update_check

    disable_tpot_update_check()
    from tpot.builtin_modules import Passthrough, SkipTransformer

    return Pipeline(
        [
            ("normalizer", Normalizer()),
            ("variance", VarianceThreshold(0.0001)),
            ("union-1", FeatureUnion([("skip", SkipTransformer()), ("pass", Passthrough())])),
            (
                "union-2",
                FeatureUnion(
                    [("a", StandardScaler()), ("b", "passthrough"), ("c", "drop")],
                    transformer_weights={"a": 2.0},
                ),
            ),
            ("best", SelectKBest(k=3)),
            ("nb", GaussianNB()),
        ]
    )


STEP_MODELS = {
    "tpot-like": tpot_like_pipeline,
    "logistic": lambda: Pipeline([("s", StandardScaler()), ("m", LogisticRegression(max_iter=500))]),
    "boosting": lambda: GradientBoostingClassifier(n_estimators=5, random_state=0),
    "minmax-logistic": lambda: Pipeline([("s", MinMaxScaler()), ("m", LogisticRegression(max_iter=500))]),
}


@pytest.mark.parametrize("name", sorted(STEP_MODELS))
def test_other_pipelines_run_their_steps_without_checks_and_answer_the_same(name: str, iris) -> None:
    X, y = iris
    model = STEP_MODELS[name]().fit(X, y)
    meta = meta_for(X, list(model.classes_))
    fast, how = compile_fast_proba(model, meta)
    assert fast is not None and how.startswith("steps without per-call checks"), how
    rng = np.random.default_rng(2)
    for rows in (X, X[:1], rng.uniform(-50, 50, size=(300, 4))):
        assert np.array_equal(fast(rows), model.predict_proba(rows))
    loaded = LoadedModel(Pointer("v", "s"), meta, model, fast_proba=fast)
    _, probabilities = loaded.predict(X[:3].tolist())
    assert [list(p.values()) for p in probabilities] == model.predict_proba(X[:3]).tolist()


def test_a_model_without_predict_proba_gets_no_shortcut(iris) -> None:
    X, y = iris
    model = RidgeClassifier().fit(X, y)
    assert compile_fast_proba(model, meta_for(X, list(model.classes_))) == (None, "predict_proba")


def test_a_shortcut_that_differs_is_refused(iris, monkeypatch: pytest.MonkeyPatch) -> None:
    from tpotserve_api import fast_path

    X, y = iris
    model = FAST_MODELS["scaled-forest"]().fit(X, y)
    real = fast_path.compile_transform
    # A scaler shortcut that is off: the verification rows must catch it.
    monkeypatch.setattr(fast_path, "compile_transform", lambda step: lambda X: real(step)(X) + 0.5)
    assert compile_fast_proba(model, meta_for(X, list(model.classes_))) == (None, "predict_proba")


def test_extreme_values_give_what_scikit_learn_gives_with_its_checks(iris) -> None:
    X, y = iris
    model = Pipeline([("s", StandardScaler()), ("m", LogisticRegression(max_iter=500))]).fit(X, y)
    loaded = LoadedModel(Pointer("v", "s"), meta_for(X, list(model.classes_)), model)
    extreme = [[1.7976931348623157e308] * 4]
    with np.errstate(all="ignore"):
        try:
            expected: Any = model.predict_proba(np.array(extreme))
        except ValueError as exc:
            expected = str(exc)
        try:
            got: Any = loaded.predict_proba(np.array(extreme))
        except ValueError as exc:
            got = str(exc)
    assert type(got) is type(expected)
    if isinstance(expected, str):
        assert got == expected
    else:
        assert np.array_equal(got, expected, equal_nan=True)


def test_pin_single_thread_sets_every_n_jobs(iris) -> None:
    X, y = iris
    model = Pipeline([("s", StandardScaler()), ("f", RandomForestClassifier(5, n_jobs=-1))]).fit(X, y)
    assert pin_single_thread(model) == ["f__n_jobs"]
    assert model.named_steps["f"].n_jobs == 1
    assert pin_single_thread(model) == []
    assert pin_single_thread(object()) == []


# --- the benchmark's own arithmetic --------------------------------------------------------
def test_wrk_summary_line_is_parsed() -> None:
    out = 'Running 2s test\nWRK_JSON {"requests": 10, "duration_us": 2000000, "p50_us": 1500}\n'
    assert bench_run.parse_wrk(out) == {"requests": 10, "duration_us": 2000000, "p50_us": 1500}
    with pytest.raises(RuntimeError):
        bench_run.parse_wrk("nothing")


def test_every_product_server_of_a_run_has_a_data_dir_of_its_own(tmp_path: Path) -> None:
    # They run side by side and start() empties the directory: a shared one pulled the JSON
    # server's files out from under it when the V2 server started (a 502 in a smoke run).
    from bench.models import BenchModel
    from bench.servers import ProductServer, ProductV2Server

    model = BenchModel(name="forest", artifact=tmp_path / "model.joblib", meta={}, description="")
    servers = [ProductServer(tmp_path, model), ProductV2Server(tmp_path, model),
               ProductServer(tmp_path, model, variant="sync:2"), ProductServer(tmp_path, model, variant="gthread:2")]
    dirs = [server.data_dir() for server in servers]
    assert len(set(dirs)) == len(servers), dirs
    assert all(d.parent == tmp_path for d in dirs)


def test_cpu_ticks_reads_this_process() -> None:
    ticks = bench_run.cpu_ticks({os.getpid(), 999_999_999})
    assert list(ticks) == [os.getpid()]
    name, value = ticks[os.getpid()]
    assert name and value >= 0
    total, by_name = bench_run.cpu_seconds_between({1: ("a", 100)}, {1: ("a", 150), 2: ("b", 10)})
    assert math.isclose(total, 60 / bench_run.CLK_TCK) and set(by_name) == {"a", "b"}


def synthetic_runs() -> list[dict[str, Any]]:
    runs = []
    for server, rate, p50, p99 in (
        ("product", 900.0, 10.0, 15.0),
        ("book", 100.0, 150.0, 200.0),
        ("mlserver", 200.0, 70.0, 90.0),
    ):
        for repeat, wiggle in enumerate((0.9, 1.0, 1.1)):
            runs.append(
                {
                    "model": "forest",
                    "server": server,
                    "scenario": "1 row, c=16",
                    "rows_per_request": 1,
                    "connections": 16,
                    "repeat": repeat,
                    "req_s": rate * wiggle,
                    "rows_s": rate * wiggle,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "errors": 0,
                    "cpu_ms_per_req": 1.0,
                }
            )
        runs.append(
            {
                "model": "forest",
                "server": server,
                "scenario": "10000 rows, c=1",
                "rows_per_request": 10_000,
                "connections": 1,
                "repeat": 0,
                "req_s": rate / 100,
                "rows_s": rate * 100,
                "p50_ms": 50.0,
                "p99_ms": 60.0,
                "errors": 0,
                "cpu_ms_per_req": None,
            }
        )
    return runs


def test_summary_ratios_targets_and_tables() -> None:
    models = [{"name": "forest", "description": "d", "inprocess": {"batch_10000_rows_s": 150_000.0}}]
    summary = bench_run.summarize(synthetic_runs(), models)
    product = next(r for r in summary if r["server"] == "product" and r["rows_per_request"] == 1)
    assert product["req_s"] == 900.0 and product["vs_book"] == 9.0 and product["vs_mlserver"] == 4.5
    assert product["p99_over_p50"] == 1.5 and product["repeats"] == 3
    batch = next(r for r in summary if r["server"] == "product" and r["rows_per_request"] == 10_000)
    assert batch["vs_inprocess"] == 0.6
    assert [t["met"] for t in bench_run.targets(summary)] == [True, True, True, True]
    capacity = bench_run.capacity(summary)
    assert capacity[0]["replicas"]["1000"] == 2  # 1000 / (0.7 * 900) -> 2
    result = {
        "label": "t",
        "started_at": "a",
        "finished_at": "b",
        "machine": {"cores": 2, "loadavg_start": [0, 0, 0], "loadavg_end": [0, 0, 0], "wrk": "wrk"},
        "settings": {"repeats": 3, "duration_s": 10, "smoke": False},
        "servers": {"product": {"label": "p", "config": {}}, "mlserver": {"label": "m", "skipped": "no"}},
        "models": models,
        "summary": summary,
        "targets": bench_run.targets(summary),
        "capacity": capacity,
    }
    text = bench_run.markdown(result)
    assert "| 1 row, c=16 | product | 900.0 |" in text and "skipped: no" in text


def test_a_missing_comparison_is_not_a_met_target() -> None:
    runs = [r for r in synthetic_runs() if r["server"] != "mlserver"]
    summary = bench_run.summarize(runs, [{"name": "forest", "description": "d", "inprocess": {}}])
    met = {t["target"]: t["met"] for t in bench_run.targets(summary)}
    assert met["forest, 1 row, c=16: req/s vs MLServer"] is None


def test_smoke_defaults_are_small() -> None:
    args = bench_run.parse_args(["--smoke"])
    assert (args.models, args.repeats, args.duration, args.concurrency, args.skip_mlserver) == (
        ["forest"],
        1,
        2,
        [1, 4],
        True,
    )
    full = bench_run.parse_args([])
    assert full.concurrency == [1, 16, 64] and full.batch_sizes == [1000, 10_000] and full.repeats >= 3
    assert Path(bench_run.LUA).is_file()


# --- bench/quality.py: the table and the verdict from its JSON, on a fake run --------------
def fake_quality_run(published: str, diff: float, low: float, high: float) -> dict[str, Any]:
    scores = {"tpot": 0.9, "dummy": 0.4, "linear": 0.95, "hist_gradient_boosting": 0.93}
    return {
        "dataset": "wine", "scoring": "accuracy", "seed": 1, "holdout_rows": 36, "tpot_seconds": 61.4,
        "candidates": {name: {"holdout_score": score, "cv_score": score - 0.01} for name, score in scores.items()},
        "published": {"name": published, "holdout_score": scores[published], "cv_score": scores[published] - 0.01},
        "best_baseline_on_holdout": {"name": "linear", "holdout_score": 0.95},
        "bootstrap": {"published_vs_best_baseline": {"diff": diff, "low": low, "high": high}},
    }


def test_quality_table_and_verdict() -> None:
    from bench import quality

    runs = [fake_quality_run("hist_gradient_boosting", -0.02, -0.06, 0.0),
            fake_quality_run("tpot", -0.05, -0.1, -0.01)]
    text = quality.table(runs)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[2].count("|")
    assert "| 0.900 | 0.400 | 0.950 | 0.930 | 0.930 HGB (0.920) | -0.020 [-0.060, +0.000] vs linear | 61 |" in lines[2]
    assert "0.900 TPOT (0.890)" in lines[3]
    result = quality.verdict(runs)
    assert [v["status"] for v in result["runs"]] == ["worse, within noise", "worse, beyond noise"]
    assert result["all_within_noise"] is False


# --- bench.tpot_runs: a pipeline's kinds ---------------------------------------
def test_tpot_runs_sorts_pipelines_into_kinds() -> None:
    from sklearn.ensemble import AdaBoostClassifier, RandomForestClassifier
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from tpot.builtin_modules import EstimatorTransformer

    from bench.tpot_runs import kinds_of

    nested = make_pipeline(FeatureUnion([("forest", EstimatorTransformer(RandomForestClassifier(5))),
                                         ("kernel", Nystroem())]), MLPClassifier())
    assert kinds_of(nested) == ["run-mlp", "run-kernel"]  # a forest only as the final estimator
    assert kinds_of(make_pipeline(Nystroem(), RandomForestClassifier())) == ["run-kernel", "run-forest"]
    assert kinds_of(make_pipeline(AdaBoostClassifier())) == ["run-boosted"]
    assert kinds_of(make_pipeline(LogisticRegression())) == []
