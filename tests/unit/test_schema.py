"""Unit tests for tpotserve.schema: request bodies, predictions, retrain payloads."""

from __future__ import annotations

import json

import pytest

from tpotserve import jobs
from tpotserve.errors import InvalidInput, MalformedBody
from tpotserve.schema import (
    CLASSIFICATION_SCORERS,
    TrainingPayload,
    build_training_payload,
    parse_json,
    parse_predict,
)
from tpotserve.settings import Settings, load_settings

FEATURES = ["SepalLength", "SepalWidth", "PetalLength", "PetalWidth"]
BOOK = {"SepalLength": 5.1, "SepalWidth": 3.5, "PetalLength": 1.4, "PetalWidth": 0.2}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment; a developer's shell must not change these tests."""
    import os

    names = {name.lower() for name in Settings.model_fields}
    for key in list(os.environ):
        if key.lower() in names:
            monkeypatch.delenv(key)


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


# --- build_training_payload ----------------------------------------------------
def test_defaults_come_from_settings() -> None:
    settings = load_settings(
        tpot_max_time_mins=2.5, tpot_generations=4, tpot_population_size=9, tpot_cv=3, tpot_n_jobs=2,
        tpot_random_state=42,
    )
    for body in (None, {}):
        payload = build_training_payload(body, settings)
        assert payload == TrainingPayload(
            dataset="iris", target="species", task="classification", max_time_mins=2.5, generations=4,
            population_size=9, cv=3, scoring="accuracy", n_jobs=2, random_state=42, reason="retrain",
        )


def test_explicit_values_override_defaults(settings: Settings) -> None:
    payload = build_training_payload(
        {"dataset": "iris", "max_time_mins": 0.5, "generations": 2, "population_size": 4, "cv": 3,
         "scoring": "f1_macro"},
        settings,
        reason="bootstrap",
    )
    assert (payload.max_time_mins, payload.generations, payload.population_size, payload.cv) == (0.5, 2, 4, 3)
    assert payload.scoring == "f1_macro"
    assert payload.reason == "bootstrap"


def test_an_integer_budget_in_minutes_is_accepted(settings: Settings) -> None:
    assert build_training_payload({"max_time_mins": 2}, settings).max_time_mins == 2.0


@pytest.mark.parametrize(
    "field, cap_setting",
    [("max_time_mins", "max_time_mins_cap"), ("generations", "generations_cap"),
     ("population_size", "population_size_cap"), ("cv", "cv_cap")],
)
def test_caps_are_enforced_naming_the_field(field: str, cap_setting: str) -> None:
    settings = load_settings(max_time_mins_cap=5.0, generations_cap=5, population_size_cap=5, cv_cap=5)
    assert getattr(build_training_payload({field: 5}, settings), field) == 5  # at the cap: fine
    with pytest.raises(InvalidInput) as info:
        build_training_payload({field: 6}, settings)
    assert info.value.field == field
    assert "at most 5" in info.value.message


@pytest.mark.parametrize(
    "field, value",
    [("max_time_mins", 0), ("max_time_mins", -1.0), ("generations", 0), ("population_size", 1), ("cv", 1)],
)
def test_lower_bounds_are_enforced_naming_the_field(settings: Settings, field: str, value) -> None:
    with pytest.raises(InvalidInput) as info:
        build_training_payload({field: value}, settings)
    assert info.value.field == field


def test_unknown_dataset_is_refused(settings: Settings) -> None:
    with pytest.raises(InvalidInput) as info:
        build_training_payload({"dataset": "titanic"}, settings)
    assert info.value.field == "dataset"
    assert "iris" in info.value.message


@pytest.mark.parametrize("scoring", ["r2", "neg_mean_squared_error", "made_up", "ACCURACY"])
def test_bad_scoring_is_refused(settings: Settings, scoring: str) -> None:
    # Regression scorers do not fit iris (a classification data set).
    with pytest.raises(InvalidInput) as info:
        build_training_payload({"scoring": scoring}, settings)
    assert info.value.field == "scoring"


@pytest.mark.parametrize("scoring", CLASSIFICATION_SCORERS)
def test_every_classification_scorer_is_accepted(settings: Settings, scoring: str) -> None:
    assert build_training_payload({"scoring": scoring}, settings).scoring == scoring


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
        ("scoring", ["accuracy"]),
    ],
)
def test_types_are_strict(settings: Settings, field: str, value) -> None:
    with pytest.raises(InvalidInput) as info:
        build_training_payload({field: value}, settings)
    assert info.value.field == field


def test_extra_keys_are_refused(settings: Settings) -> None:
    with pytest.raises(InvalidInput) as info:
        build_training_payload({"generations": 2, "n_jobs": 64}, settings)
    assert info.value.field == "n_jobs"


@pytest.mark.parametrize("body", [[], ["iris"], "iris", 3])
def test_retrain_body_must_be_an_object(settings: Settings, body) -> None:
    with pytest.raises(InvalidInput) as info:
        build_training_payload(body, settings)
    assert info.value.field is None


def test_job_timeout_is_budget_plus_margin(settings: Settings) -> None:
    payload = build_training_payload({"max_time_mins": 2.5}, settings)
    assert jobs.job_timeout(payload, 300) == 150 + 300
    # Far beyond RQ's 180 s default for any real budget.
    assert jobs.job_timeout(build_training_payload({"max_time_mins": 60}, settings), 0) == 3600


def test_payload_survives_the_queue_round_trip(settings: Settings) -> None:
    payload = build_training_payload({"generations": 2}, settings)
    assert TrainingPayload.model_validate(json.loads(json.dumps(payload.model_dump()))) == payload
