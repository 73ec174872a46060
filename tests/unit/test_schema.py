"""Unit tests for tpotserve.schema (retrain payloads) and tpotserve_api.predict_request (request bodies, predictions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpotserve import jobs
from tpotserve.datasets import DataLimits, DatasetStore, min_rows_per_class
from tpotserve.errors import InvalidInput, MalformedBody
from tpotserve.schema import (
    CLASSIFICATION_SCORERS,
    REGRESSION_SCORERS,
    RetrainRequest,
    TrainingPayload,
    build_training_payload,
    check_caps,
    parse_retrain_request,
)
from tpotserve.settings import Settings, load_settings
from tpotserve.training import plan_training
from tpotserve_api.predict_request import FAR_OUTSIDE, parse_json, parse_predict, range_warnings

FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
BOOK = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}


@pytest.fixture
def settings() -> Settings:
    return load_settings()


# --- parse_json ----------------------------------------------------------------
def test_parse_json_accepts_an_object() -> None:
    assert parse_json(json.dumps(BOOK).encode()) == BOOK


@pytest.mark.parametrize(
    "raw", [b"NaN", b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b"[1, 2, -Infinity]"]
)
def test_parse_json_refuses_non_finite_constants_as_invalid_input(raw: bytes) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_json(raw)
    # Not "malformed" (400): the JSON parses, the value is unusable (422).
    assert type(info.value) is InvalidInput
    assert "finite" in info.value.message


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"a": 1,}',
        b"{'a': 1}",
        b'{"a": 1} trailing',
        b"\xef\xbb\xbf{}",  # a UTF-8 BOM is not JSON
        b"   ",
    ],
)
def test_parse_json_refuses_malformed_json(raw: bytes) -> None:
    with pytest.raises(MalformedBody):
        parse_json(raw)


def test_parse_json_refuses_an_empty_body() -> None:
    with pytest.raises(MalformedBody, match="empty"):
        parse_json(b"")


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"[" * 100_000,  # unterminated and deep
    ],
)
def test_parse_json_refuses_deep_nesting_without_a_recursion_error(raw: bytes) -> None:
    # pytest.raises(MalformedBody) would not catch a RecursionError: it would error the test.
    with pytest.raises(MalformedBody):
        parse_json(raw)


@pytest.mark.parametrize("raw", [b'{"a": "\xff"}', b"\xfe\xff\x00{\x00}", '{"a": "é"}'.encode("latin-1")])
def test_parse_json_refuses_non_utf8(raw: bytes) -> None:
    with pytest.raises(MalformedBody, match="UTF-8"):
        parse_json(raw)


def test_parse_json_refuses_huge_integers_as_malformed() -> None:
    # Python caps int parsing at 4300 digits; that ValueError must not escape.
    with pytest.raises(MalformedBody):
        parse_json(b'{"a": ' + b"9" * 5000 + b"}")


# --- parse_predict ---------------------------------------------------------------
def test_the_books_single_object_gives_one_row_in_feature_order() -> None:
    reordered = {"PetalWidth": 0.2, "SepalLength": 5.1, "PetalLength": 1.4, "SepalWidth": 3.5}
    parsed = parse_predict(reordered, FEATURES, max_rows=10)
    assert parsed.single is True
    assert parsed.rows == [[5.1, 3.5, 1.4, 0.2]]
    assert parsed.originals == [reordered]


def test_integers_become_floats() -> None:
    parsed = parse_predict({"SepalLength": 5, "SepalWidth": 3, "PetalLength": 1, "PetalWidth": 0}, FEATURES, 10)
    assert parsed.rows == [[5.0, 3.0, 1.0, 0.0]]
    assert all(type(v) is float for v in parsed.rows[0])


def test_instances_batch() -> None:
    second = {"PetalWidth": 2.3, "PetalLength": 5.4, "SepalWidth": 3.0, "SepalLength": 6.9}
    parsed = parse_predict({"instances": [BOOK, second]}, FEATURES, max_rows=10)
    assert parsed.single is False
    assert parsed.rows == [[5.1, 3.5, 1.4, 0.2], [6.9, 3.0, 5.4, 2.3]]
    assert parsed.originals == [BOOK, second]


def test_batch_of_exactly_max_rows_is_accepted() -> None:
    assert len(parse_predict({"instances": [BOOK] * 5}, FEATURES, max_rows=5).rows) == 5


@pytest.mark.parametrize(
    "bad_value, expected_message",
    [
        ("0.2", "must be a number"),
        (True, "must be a number"),
        (False, "must be a number"),
        (None, "must be a number"),
        ([0.2], "must be a number"),
        ({"v": 0.2}, "must be a number"),
        (float("inf"), "finite"),
        (float("-inf"), "finite"),
        (float("nan"), "finite"),
    ],
)
def test_bad_feature_values_name_the_field(bad_value, expected_message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_predict({**BOOK, "PetalWidth": bad_value}, FEATURES, 10)
    assert info.value.field == "PetalWidth"
    assert expected_message in info.value.message
    with pytest.raises(InvalidInput) as info:
        parse_predict({"instances": [BOOK, {**BOOK, "PetalWidth": bad_value}]}, FEATURES, 10)
    assert info.value.field == "instances[1].PetalWidth"


def test_1e999_parses_to_inf_and_is_refused_naming_the_field() -> None:
    body = parse_json(b'{"instances": [{"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, '
                      b'"PetalWidth": 0.2}, {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, '
                      b'"PetalWidth": 1e999}]}')
    assert body["instances"][1]["PetalWidth"] == float("inf")
    with pytest.raises(InvalidInput) as info:
        parse_predict(body, FEATURES, 10)
    assert info.value.field == "instances[1].PetalWidth"


def test_unknown_feature_is_refused_naming_it() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_predict({**BOOK, "Colour": 1.0}, FEATURES, 10)
    assert info.value.field == "Colour"
    assert "unknown feature" in info.value.message
    with pytest.raises(InvalidInput) as info:
        parse_predict({"instances": [BOOK, BOOK, {**BOOK, "Colour": 1.0}]}, FEATURES, 10)
    assert info.value.field == "instances[2].Colour"


def test_missing_feature_is_refused_naming_it() -> None:
    partial = {k: v for k, v in BOOK.items() if k != "SepalWidth"}
    with pytest.raises(InvalidInput) as info:
        parse_predict(partial, FEATURES, 10)
    assert info.value.field == "SepalWidth"
    assert "missing" in info.value.message
    with pytest.raises(InvalidInput) as info:
        parse_predict({"instances": [partial]}, FEATURES, 10)
    assert info.value.field == "instances[0].SepalWidth"


def test_empty_object_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_predict({}, FEATURES, 10)
    assert info.value.field == "SepalLength"


def test_empty_instances_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_predict({"instances": []}, FEATURES, 10)
    assert info.value.field == "instances"


def test_too_many_rows_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_predict({"instances": [BOOK] * 6}, FEATURES, max_rows=5)
    assert info.value.field == "instances"
    assert "limit is 5" in info.value.message


@pytest.mark.parametrize("instances", ["BOOK", 3, {"a": 1}, None])
def test_instances_must_be_a_list(instances) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_predict({"instances": instances}, FEATURES, 10)
    assert info.value.field == "instances"


@pytest.mark.parametrize("item", [[5.1, 3.5, 1.4, 0.2], 5.1, "row", None])
def test_non_object_instance_is_refused_naming_its_index(item) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_predict({"instances": [BOOK, item]}, FEATURES, 10)
    assert info.value.field == "instances[1]"


def test_key_beside_instances_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_predict({"instances": [BOOK], "extra": 1}, FEATURES, 10)
    assert info.value.field == "extra"


@pytest.mark.parametrize("body", [[BOOK], [], 5.1, "text", None, True])
def test_top_level_must_be_an_object(body) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_predict(body, FEATURES, 10)
    assert type(info.value) is InvalidInput
    assert info.value.field is None


def test_huge_integer_feature_is_refused_naming_the_field() -> None:
    body = parse_json(b'{"SepalLength": 1' + b"0" * 400 + b', "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}')
    with pytest.raises(InvalidInput) as info:
        parse_predict(body, FEATURES, 10)
    assert info.value.field == "SepalLength"


# --- range_warnings -------------------------------------------------------------
# The training ranges of a model's features, as the trainer writes them into meta.json.
RANGES = [
    {"name": "SepalLength", "type": "number", "min": 4.3, "max": 7.9},
    {"name": "SepalWidth", "type": "number", "min": 2.0, "max": 4.4},
    {"name": "PetalLength", "type": "number", "min": 1.0, "max": 6.9},
    {"name": "PetalWidth", "type": "number", "min": 0.1, "max": 2.5},
]


def _rows(*bodies: dict) -> list[list[float]]:
    return parse_predict({"instances": list(bodies)}, FEATURES, 10).rows


def test_values_in_the_training_range_give_no_warnings() -> None:
    assert range_warnings(_rows(BOOK), RANGES, single=True) == []
    edges = [{f["name"]: f["min"] for f in RANGES}, {f["name"]: f["max"] for f in RANGES}]
    assert range_warnings(_rows(*edges), RANGES, single=False) == []


def test_values_just_outside_the_range_are_not_far_outside() -> None:
    # PetalWidth's range is 2.4 wide: up to FAR_OUTSIDE * 2.4 beyond either end is tolerated.
    margin = FAR_OUTSIDE * (2.5 - 0.1)
    near = [{**BOOK, "PetalWidth": 2.5 + margin * 0.99}, {**BOOK, "PetalWidth": 0.1 - margin * 0.99}]
    assert range_warnings(_rows(*near), RANGES, single=False) == []
    # Half a range beyond the end: 3.0 is 0.5 past PetalWidth's 2.5, well within 0.5 * 2.4.
    assert range_warnings(_rows({**BOOK, "PetalWidth": 3.0}), RANGES, single=True) == []
    assert len(range_warnings(_rows({**BOOK, "PetalWidth": 3.8}), RANGES, single=True)) == 1


def test_a_value_far_outside_is_reported_naming_the_field() -> None:
    warnings = range_warnings(_rows({**BOOK, "PetalWidth": 10.0}), RANGES, single=True)
    assert len(warnings) == 1
    assert warnings[0]["field"] == "PetalWidth"
    assert warnings[0]["code"] == "outside_training_range"
    assert "10.0" in warnings[0]["message"] and "2.5" in warnings[0]["message"]


def test_far_below_the_range_is_reported_too() -> None:
    warnings = range_warnings(_rows({**BOOK, "SepalLength": -50.0}), RANGES, single=True)
    assert [w["field"] for w in warnings] == ["SepalLength"]


def test_batch_warnings_name_the_instance() -> None:
    rows = _rows(BOOK, {**BOOK, "SepalWidth": 40.0, "PetalLength": -30.0}, BOOK, {**BOOK, "PetalWidth": 99.0})
    fields = [w["field"] for w in range_warnings(rows, RANGES, single=False)]
    assert fields == ["instances[1].SepalWidth", "instances[1].PetalLength", "instances[3].PetalWidth"]


def test_features_without_a_recorded_range_are_not_checked() -> None:
    no_range = [{"name": f["name"], "type": "number"} for f in RANGES]
    assert range_warnings(_rows({**BOOK, "PetalWidth": 1e9}), no_range, single=True) == []


# --- parse_retrain_request: shape and types --------------------------------------
@pytest.mark.parametrize("body", [None, {}])
def test_an_empty_retrain_body_is_all_defaults(body) -> None:
    request = parse_retrain_request(body)
    assert request == RetrainRequest()
    assert (request.model, request.dataset) == (None, None)  # the default model, on its own data set
    assert (request.target, request.task, request.scoring) == (None, None, None)
    assert (request.max_time_mins, request.generations, request.population_size, request.cv) == (None,) * 4
    assert request.promote == "auto"
    assert request.queue is False


def test_every_retrain_field_is_parsed() -> None:
    body = {"model": "housing", "dataset": "ds-0123456789ab", "target": "label", "task": "regression", "max_time_mins": 0.5,
            "generations": 2, "population_size": 4, "cv": 3, "scoring": "r2", "random_state": 7, "promote": "never",
            "queue": True, "baselines": False, "description": "House prices from the 2026 survey.",
            "replace_contract": True}
    assert parse_retrain_request(body).model_dump() == body


def test_an_integer_budget_in_minutes_is_accepted() -> None:
    request = parse_retrain_request({"max_time_mins": 2})
    assert request.max_time_mins == 2.0 and isinstance(request.max_time_mins, float)


@pytest.mark.parametrize(
    "field, value",
    [("max_time_mins", 0), ("max_time_mins", -1.0), ("generations", 0), ("population_size", 1), ("cv", 1)],
)
def test_lower_bounds_are_enforced_naming_the_field(field: str, value) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_retrain_request({field: value})
    assert info.value.field == field


@pytest.mark.parametrize(
    "field, value",
    [
        ("generations", "3"),
        ("generations", True),
        ("generations", 3.0),
        ("population_size", "8"),
        ("cv", False),
        ("max_time_mins", "1.5"),
        ("max_time_mins", True),
        ("dataset", 1),
        ("model", 1),
        ("model", "current"),
        ("model", "../iris"),
        ("model", ""),
        ("scoring", ["accuracy"]),
        ("target", 1),
        ("target", ["species"]),
        ("task", "clustering"),
        ("task", "Classification"),
        ("promote", "sometimes"),
        ("promote", True),
        ("queue", "yes"),
        ("queue", 1),
        ("queue", None),
    ],
)
def test_types_are_strict(field: str, value) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_retrain_request({field: value})
    assert type(info.value) is InvalidInput
    assert info.value.field == field


@pytest.mark.parametrize("extra", ["n_jobs", "holdout_fraction", "model_keep", "reason",
                                   "dataset_sha256"])
def test_extra_keys_are_refused(extra: str) -> None:
    # Payload-only fields are the server's to set, never the client's.
    with pytest.raises(InvalidInput) as info:
        parse_retrain_request({"generations": 2, extra: 64})
    assert info.value.field == extra


@pytest.mark.parametrize("body", [[], ["iris"], "iris", 3, True])
def test_retrain_body_must_be_an_object(body) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_retrain_request(body)
    assert type(info.value) is InvalidInput
    assert info.value.field is None


# --- caps --------------------------------------------------------------------------
CAPS = [("max_time_mins", "max_time_mins_cap"), ("generations", "generations_cap"),
        ("population_size", "population_size_cap"), ("cv", "cv_cap")]


@pytest.mark.parametrize("field, cap_setting", CAPS)
def test_caps_are_enforced_naming_the_field(field: str, cap_setting: str) -> None:
    settings = load_settings(**{cap_setting: 5})
    check_caps(parse_retrain_request({field: 5}), settings)  # at the cap: fine
    payload = build_training_payload(
        parse_retrain_request({field: 5}), settings, target="species", task="classification"
    )
    assert getattr(payload, field) == 5
    with pytest.raises(InvalidInput) as info:
        check_caps(parse_retrain_request({field: 6}), settings)
    assert info.value.field == field
    assert "at most 5" in info.value.message


def test_caps_are_checked_before_the_data_set_is_looked_up(tmp_path: Path) -> None:
    settings = load_settings(cv_cap=5)
    datasets = DatasetStore(tmp_path / "datasets", DataLimits.from_settings(settings))
    with pytest.raises(InvalidInput) as info:
        plan_training(parse_retrain_request({"dataset": "nope", "cv": 6}), settings, datasets)
    assert info.value.field == "cv"


def test_default_caps_refuse_an_oversized_request(settings: Settings) -> None:
    with pytest.raises(InvalidInput) as info:
        check_caps(parse_retrain_request({"cv": 1000}), settings)
    assert info.value.field == "cv"


# --- build_training_payload: defaults and scoring --------------------------------------
def _payload(body, settings: Settings, **kwargs) -> TrainingPayload:
    kwargs.setdefault("target", "species")
    kwargs.setdefault("task", "classification")
    return build_training_payload(parse_retrain_request(body), settings, **kwargs)


def test_defaults_come_from_settings() -> None:
    settings = load_settings(
        tpot_max_time_mins=2.5, tpot_generations=4, tpot_population_size=9, tpot_cv=3, tpot_n_jobs=2,
        tpot_random_state=42, holdout_fraction=0.3, model_keep=4,
    )
    for body in (None, {}):
        assert _payload(body, settings) == TrainingPayload(
            model="iris", dataset="iris", target="species", task="classification", max_time_mins=2.5, generations=4,
            population_size=9, cv=3, scoring="accuracy", n_jobs=2, random_state=42, holdout_fraction=0.3,
            promote="auto", model_keep=4, reason="retrain", dataset_sha256=None,
        )


def test_regression_defaults_to_r2(settings: Settings) -> None:
    payload = _payload({}, settings, target="PetalWidth", task="regression")
    assert (payload.task, payload.scoring, payload.target) == ("regression", "r2", "PetalWidth")


def test_explicit_values_override_defaults(settings: Settings) -> None:
    payload = _payload(
        {"dataset": "iris", "max_time_mins": 0.5, "generations": 2, "population_size": 4, "cv": 3,
         "scoring": "f1_macro", "promote": "never", "queue": True},
        settings,
        reason="bootstrap",
        dataset_sha256="ab" * 32,
    )
    assert (payload.max_time_mins, payload.generations, payload.population_size, payload.cv) == (0.5, 2, 4, 3)
    assert payload.scoring == "f1_macro"
    assert payload.reason == "bootstrap"
    assert payload.promote == "never"
    assert payload.dataset_sha256 == "ab" * 32
    # "queue" is how the API enqueues, not part of the run.
    assert "queue" not in payload.model_dump()


def test_a_requests_random_state_overrides_the_servers() -> None:
    settings = load_settings(tpot_random_state=42)
    assert _payload({"random_state": 3}, settings).random_state == 3
    assert _payload({}, settings).random_state == 42
    with pytest.raises(InvalidInput) as info:
        parse_retrain_request({"random_state": -1})
    assert info.value.field == "random_state"


@pytest.mark.parametrize("scoring", ["r2", "neg_mean_squared_error", "made_up", "ACCURACY"])
def test_bad_classification_scoring_is_refused(settings: Settings, scoring: str) -> None:
    with pytest.raises(InvalidInput) as info:
        _payload({"scoring": scoring}, settings)
    assert info.value.field == "scoring"
    assert "classification" in info.value.message


def test_an_empty_scoring_means_the_default(settings: Settings) -> None:
    assert _payload({"scoring": ""}, settings).scoring == "accuracy"
    assert _payload({"scoring": ""}, settings, task="regression").scoring == "r2"


@pytest.mark.parametrize("scoring", ["accuracy", "f1_macro", "roc_auc_ovr", "made_up", "R2"])
def test_bad_regression_scoring_is_refused(settings: Settings, scoring: str) -> None:
    with pytest.raises(InvalidInput) as info:
        _payload({"scoring": scoring}, settings, target="PetalWidth", task="regression")
    assert info.value.field == "scoring"
    assert "regression" in info.value.message


@pytest.mark.parametrize("scoring", CLASSIFICATION_SCORERS)
def test_every_classification_scorer_is_accepted(settings: Settings, scoring: str) -> None:
    assert _payload({"scoring": scoring}, settings).scoring == scoring


@pytest.mark.parametrize("scoring", REGRESSION_SCORERS)
def test_every_regression_scorer_is_accepted(settings: Settings, scoring: str) -> None:
    assert _payload({"scoring": scoring}, settings, target="y", task="regression").scoring == scoring


def test_job_timeout_is_budget_plus_margin(settings: Settings) -> None:
    payload = _payload({"max_time_mins": 2.5}, settings)
    assert jobs.job_timeout(payload, 300) == 150 + 300
    # Far beyond RQ's 180 s default for any real budget.
    assert jobs.job_timeout(_payload({"max_time_mins": 60}, settings), 0) == 3600
    # Without a budget in the request, the server's default budget counts.
    default = load_settings(tpot_max_time_mins=3.0)
    assert jobs.job_timeout(_payload({}, default), default.job_timeout_margin_s) == 180 + 300


def test_payload_survives_the_queue_round_trip(settings: Settings) -> None:
    payload = _payload({"generations": 2, "promote": "always"}, settings, dataset_sha256="c" * 64)
    assert TrainingPayload.model_validate(json.loads(json.dumps(payload.model_dump()))) == payload


# --- plan_training: the request against its data set --------------------------------------
def _csv(header: str, rows: list[str]) -> bytes:
    return (header + "\n" + "\n".join(rows) + "\n").encode()


# 15 rows of each of two labels, two numeric features.
LABELLED = _csv("a,b,label", [f"{i},{i * 0.5},{'yes' if i % 2 else 'no'}" for i in range(30)])
# A numeric target with many distinct values: regression.
MEASURED = _csv("a,b,y", [f"{i},{i % 7},{i * 1.37:.2f}" for i in range(40)])


@pytest.fixture
def datasets(tmp_path: Path, settings: Settings) -> DatasetStore:
    return DatasetStore(tmp_path / "datasets", DataLimits.from_settings(settings))


def test_plan_for_iris_defaults_to_species_classification(settings: Settings, datasets: DatasetStore) -> None:
    for body in (None, {}, {"dataset": "iris"}):
        payload = plan_training(parse_retrain_request(body), settings, datasets)
        assert payload == _payload({}, settings)
        assert (payload.target, payload.task, payload.dataset_sha256) == ("species", "classification", None)


def test_plan_for_iris_with_another_target_refuses_the_text_column(settings, datasets) -> None:
    # Predicting a measurement makes species a feature, and features must be numbers.
    with pytest.raises(InvalidInput) as info:
        plan_training(parse_retrain_request({"target": "PetalWidth"}), settings, datasets)
    assert info.value.field == "species"


def test_plan_for_an_unknown_dataset_names_the_field(settings, datasets) -> None:
    for name in ("titanic", "ds-000000000000", "../models", ".tmp-x"):
        with pytest.raises(InvalidInput) as info:
            plan_training(parse_retrain_request({"dataset": name}), settings, datasets)
        assert type(info.value) is InvalidInput  # 422, not a 404 for a body field
        assert info.value.field == "dataset"
        assert "iris" in info.value.message


def test_plan_for_an_upload_needs_a_target(settings, datasets) -> None:
    meta, _ = datasets.save(LABELLED)
    with pytest.raises(InvalidInput) as info:
        plan_training(parse_retrain_request({"dataset": meta["id"]}), settings, datasets)
    assert info.value.field == "target"


def test_plan_for_an_upload_with_an_unknown_target(settings, datasets) -> None:
    meta, _ = datasets.save(LABELLED)
    with pytest.raises(InvalidInput) as info:
        plan_training(parse_retrain_request({"dataset": meta["id"], "target": "species"}), settings, datasets)
    assert info.value.field == "target"
    assert "label" in info.value.message  # the columns it does have


def test_plan_for_an_upload_infers_the_task_and_pins_the_hash(settings, datasets) -> None:
    labelled, _ = datasets.save(LABELLED)
    body = {"dataset": labelled["id"], "target": "label"}
    payload = plan_training(parse_retrain_request(body), settings, datasets)
    assert (payload.dataset, payload.target, payload.task) == (labelled["id"], "label", "classification")
    assert payload.dataset_sha256 == labelled["sha256"]
    assert payload.scoring == "accuracy"

    measured, _ = datasets.save(MEASURED)
    body = {"dataset": measured["id"], "target": "y"}
    payload = plan_training(parse_retrain_request(body), settings, datasets)
    assert (payload.task, payload.scoring) == ("regression", "r2")
    assert TrainingPayload.model_validate(json.loads(json.dumps(payload.model_dump()))) == payload


def test_plan_honours_an_explicit_task(settings, datasets) -> None:
    meta, _ = datasets.save(MEASURED)
    # "a" has 40 distinct integers: regression by inference, but the client may say otherwise...
    body = {"dataset": meta["id"], "target": "a"}
    inferred = plan_training(parse_retrain_request(body), settings, datasets)
    assert inferred.task == "regression"
    # ... and b (7 values, 5-6 rows each) can be a classification with cv=3.
    body = {"dataset": meta["id"], "target": "b", "task": "classification", "cv": 3}
    assert plan_training(parse_retrain_request(body), settings, datasets).task == "classification"


def test_plan_checks_the_scoring_against_the_inferred_task(settings, datasets) -> None:
    meta, _ = datasets.save(MEASURED)
    body = {"dataset": meta["id"], "target": "y", "scoring": "accuracy"}
    with pytest.raises(InvalidInput) as info:
        plan_training(parse_retrain_request(body), settings, datasets)
    assert info.value.field == "scoring"


def test_plan_uses_the_requested_cv_for_the_class_size_check(settings, datasets) -> None:
    # Two classes of 15 rows. With a 20% holdout cv=12 needs 15 rows a class, cv=13 needs 17.
    assert (min_rows_per_class(12, 0.2), min_rows_per_class(13, 0.2)) == (15, 17)
    meta, _ = datasets.save(LABELLED)
    body = {"dataset": meta["id"], "target": "label"}
    wide = load_settings(cv_cap=20)
    assert plan_training(parse_retrain_request({**body, "cv": 12}), wide, datasets).cv == 12
    with pytest.raises(InvalidInput) as info:
        plan_training(parse_retrain_request({**body, "cv": 13}), wide, datasets)
    assert info.value.field == "target"
    assert "cv=13" in info.value.message
    # Without a cv in the request, the server's default decides.
    with pytest.raises(InvalidInput):
        plan_training(parse_retrain_request(body), load_settings(tpot_cv=13, cv_cap=20), datasets)


def test_plan_passes_the_reason_through(settings, datasets) -> None:
    payload = plan_training(parse_retrain_request({}), settings, datasets, reason="bootstrap")
    assert payload.reason == "bootstrap"
