"""Unit tests for tpotserve.datasets: the data rules, with real CSV bytes, and the dataset store."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from tpotserve import datasets as datasets_module
from tpotserve.datasets import (
    IRIS_FEATURES,
    MAX_CLASSES_FOR_INFERENCE,
    DataLimits,
    DatasetStore,
    check_trainable,
    infer_task,
    min_rows_per_class,
    parse_csv,
)
from tpotserve.errors import InvalidInput, NotFound
from tpotserve.settings import load_settings

LIMITS = DataLimits(max_rows=1000, max_columns=20, min_rows=20, holdout_fraction=0.2)


def csv_bytes(header: str, rows: list[str]) -> bytes:
    return (header + "\n" + "".join(row + "\n" for row in rows)).encode()


def labelled(n_per_class: dict[str, int], features: int = 2) -> bytes:
    """Numeric features and a text label with the given class sizes."""
    names = [f"f{i}" for i in range(features)]
    rows, i = [], 0
    for label, count in n_per_class.items():
        for _ in range(count):
            rows.append(",".join([*(str(i * (k + 1) % 17 + 0.5) for k in range(features)), label]))
            i += 1
    return csv_bytes(",".join([*names, "label"]), rows)


GOOD = labelled({"a": 15, "b": 15})


def refused(raw: bytes, limits: DataLimits = LIMITS) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse_csv(raw, limits)
    assert type(info.value) is InvalidInput
    assert info.value.message
    return info.value


# --- parse_csv: what is refused ---------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    ["x,y\né,1\n".encode("latin-1"), b"x,y\n\xff\xfe,1\n", "x,y\n1,2\n".encode("utf-16")],
    ids=["latin-1", "invalid-bytes", "utf-16"],
)
def test_a_non_utf8_file_is_refused(raw: bytes) -> None:
    error = refused(raw)
    assert error.field == "file"
    assert "UTF-8" in error.message


@pytest.mark.parametrize(
    "raw", [b"", b"   ", b"\n\n", b" \r\n\t"], ids=["empty", "spaces", "newlines", "mixed"]
)
def test_an_empty_file_is_refused(raw: bytes) -> None:
    error = refused(raw)
    assert error.field == "file"
    assert "empty" in error.message


@pytest.mark.parametrize(
    "raw", [b"x,y\n", b"x,y", b"x,y\n\n\n"], ids=["header-newline", "header", "blank-lines"]
)
def test_a_header_only_file_is_refused(raw: bytes) -> None:
    error = refused(raw)
    assert error.field == "file"
    assert "no data rows" in error.message


@pytest.mark.parametrize("header", ["x,y,x", "x, y,y ", "label,x,label"])
def test_duplicate_column_names_are_refused_naming_the_column(header: str) -> None:
    duplicate = header.split(",")[-1].strip()
    error = refused(csv_bytes(header, ["1,2,3"]))
    assert error.field == duplicate
    assert "twice" in error.message


@pytest.mark.parametrize("header", ["x,,y", ",x,y", "x,y,", "x, ,y"])
def test_an_empty_column_name_is_refused(header: str) -> None:
    error = refused(csv_bytes(header, ["1,2,3"]))
    assert error.field == "file"
    assert "no name" in error.message


def test_a_single_column_is_refused() -> None:
    error = refused(csv_bytes("x", ["1", "2", "3"]))
    assert error.field == "file"
    assert "two columns" in error.message


@pytest.mark.parametrize("raw", [b"x,y\n1,\x002\n", b"\x00\x01\x02\x03,\x00\n", b"x,y\x00\n1,2\n"])
def test_a_binary_file_with_nul_bytes_is_refused(raw: bytes) -> None:
    error = refused(raw)
    assert error.field == "file"
    assert "binary" in error.message


@pytest.mark.parametrize(
    "raw",
    [b"x,y\n1,2\n3,4,5\n", b'x,y\n"1,2\n3,4\n'],
    ids=["extra-field-after-a-good-row", "unterminated-quote"],
)
def test_invalid_csv_that_pandas_refuses_is_invalid_input(raw: bytes) -> None:
    error = refused(raw)
    assert error.field == "file"
    assert "not valid CSV" in error.message or "fields but the header names" in error.message


def test_rows_longer_than_the_header_are_refused() -> None:
    # pandas alone would shift the data one column to the left (x=[2, 5], y=[3, 6]).
    for raw in (b"x,y\n1,2,3\n4,5,6\n", b"x,y\n1,2,3\n4,5\n"):
        with pytest.raises(InvalidInput) as info:
            parse_csv(raw, LIMITS)
        assert info.value.field == "file"


def test_rows_shorter_than_the_header_become_missing_values() -> None:
    # Lenient at parse time; check_trainable then refuses the missing values by column.
    frame = parse_csv(b"x,y\n1\n2,3\n", LIMITS)
    assert frame["x"].tolist() == [1, 2]
    assert math.isnan(frame["y"][0])


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "-Infinity", "1e999"])
def test_infinite_values_are_refused_naming_the_column(value: str) -> None:
    error = refused(csv_bytes("x,weight,y", ["1,2.5,a", f"2,{value},b", "3,4,a"]))
    assert error.field == "weight"
    assert "infinite" in error.message


def test_more_rows_than_the_cap_are_refused() -> None:
    limits = DataLimits(max_rows=5, max_columns=20, min_rows=1, holdout_fraction=0.2)
    at_cap = csv_bytes("x,y", [f"{i},{i}" for i in range(5)])
    assert len(parse_csv(at_cap, limits)) == 5
    error = refused(csv_bytes("x,y", [f"{i},{i}" for i in range(6)]), limits)
    assert error.field == "file"
    assert "5 rows" in error.message


def test_more_columns_than_the_cap_are_refused() -> None:
    limits = DataLimits(max_rows=100, max_columns=4, min_rows=1, holdout_fraction=0.2)
    assert list(parse_csv(csv_bytes("a,b,c,d", ["1,2,3,4"]), limits).columns) == ["a", "b", "c", "d"]
    error = refused(csv_bytes("a,b,c,d,e", ["1,2,3,4,5"]), limits)
    assert error.field == "file"
    assert "at most 4" in error.message


# --- parse_csv: what is accepted -----------------------------------------------------------
def test_a_plain_csv_parses_with_numeric_types() -> None:
    frame = parse_csv(b"x,y,label\n1,2.5,a\n3,4.5,b\n", LIMITS)
    assert list(frame.columns) == ["x", "y", "label"]
    assert frame["x"].tolist() == [1, 3] and pd.api.types.is_integer_dtype(frame["x"])
    assert frame["y"].tolist() == [2.5, 4.5] and pd.api.types.is_float_dtype(frame["y"])
    assert frame["label"].tolist() == ["a", "b"]


def test_a_utf8_bom_is_accepted() -> None:
    plain = parse_csv(GOOD, LIMITS)
    with_bom = parse_csv(b"\xef\xbb\xbf" + GOOD, LIMITS)
    assert list(with_bom.columns)[0] == "f0"  # not "\ufefff0"
    pd.testing.assert_frame_equal(plain, with_bom)


def test_non_ascii_names_and_labels_are_kept() -> None:
    frame = parse_csv("größe,espèce\n1,été\n2,hiver\n".encode(), LIMITS)
    assert list(frame.columns) == ["größe", "espèce"]
    assert frame["espèce"].tolist() == ["été", "hiver"]


def test_header_names_are_stripped_and_crlf_is_fine() -> None:
    frame = parse_csv(b" x , y\r\n1, 2\r\n3, 4\r\n", LIMITS)
    assert list(frame.columns) == ["x", "y"]
    assert frame["y"].tolist() == [2, 4]


def test_missing_value_markers_become_nan() -> None:
    frame = parse_csv(b"x,y\n1,\n2,NA\n3,null\n4,5\n", LIMITS)
    assert frame["y"].isna().tolist() == [True, True, True, False]


# --- task inference --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, task",
    [
        (["setosa", "versicolor", "setosa"], "classification"),
        (["1", "2", "x"], "classification"),
        ([True, False, True], "classification"),
        ([0, 1, 0, 1], "classification"),
        (list(range(MAX_CLASSES_FOR_INFERENCE)), "classification"),
        (list(range(MAX_CLASSES_FOR_INFERENCE + 1)), "regression"),
        ([0.5, 1.25, 3.0, 2.75], "regression"),
        ([1.0, 2.0, 1.0], "classification"),  # integral floats count as integers
        ([x / 10 for x in range(100)], "regression"),
        (list(range(1000)), "regression"),
    ],
)
def test_infer_task(values: list, task: str) -> None:
    assert infer_task(pd.Series(values)) == task


# --- min_rows_per_class ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cv, holdout, expected",
    [(5, 0.2, 7), (2, 0.2, 3), (10, 0.2, 13), (3, 0.1, 4), (5, 0.4, 9), (4, 0.25, 6)],
)
def test_min_rows_per_class_values(cv: int, holdout: float, expected: int) -> None:
    assert min_rows_per_class(cv, holdout) == expected


@pytest.mark.parametrize("cv", range(2, 16))
@pytest.mark.parametrize("holdout", [0.05, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.4, 0.49])
def test_min_rows_per_class_is_the_smallest_that_keeps_cv_rows_for_training(cv: int, holdout: float) -> None:
    n = min_rows_per_class(cv, holdout)
    assert n - math.ceil(n * holdout) >= cv
    fewer = n - 1
    assert fewer - math.ceil(fewer * holdout) < cv


# --- check_trainable -----------------------------------------------------------------------------
def frame_of(raw: bytes) -> pd.DataFrame:
    return parse_csv(raw, LIMITS)


def not_trainable(frame: pd.DataFrame, target: str = "label", task: str | None = None, cv: int = 5,
                  limits: DataLimits = LIMITS) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        check_trainable(frame, target, task, cv, limits)
    return info.value


def test_a_good_frame_is_trainable() -> None:
    assert check_trainable(frame_of(GOOD), "label", None, 5, LIMITS) == "classification"


def test_iris_is_trainable_with_the_defaults() -> None:
    frame = datasets_module.iris_frame()
    assert list(frame.columns) == [*IRIS_FEATURES, "species"]
    assert check_trainable(frame, "species", None, 5, LIMITS) == "classification"


def test_an_unknown_target_is_refused() -> None:
    error = not_trainable(frame_of(GOOD), target="species")
    assert error.field == "target"
    assert "label" in error.message  # the columns it does have


def test_too_few_rows_are_refused() -> None:
    small = frame_of(labelled({"a": 10, "b": 9}))
    error = not_trainable(small, cv=2)
    assert error.field == "dataset"
    assert "19 rows" in error.message and "20" in error.message
    enough = frame_of(labelled({"a": 10, "b": 10}))
    assert check_trainable(enough, "label", None, 2, LIMITS) == "classification"


def test_missing_target_values_are_refused() -> None:
    frame = frame_of(GOOD.replace(b",a\n", b",\n", 1))
    error = not_trainable(frame)
    assert error.field == "target"
    assert "missing" in error.message


def test_a_non_numeric_feature_column_is_refused_naming_it() -> None:
    rows = [f"{i},c{i % 3},{'ab'[i % 2]}" for i in range(30)]
    error = not_trainable(frame_of(csv_bytes("x,colour,label", rows)))
    assert error.field == "colour"
    assert "not numeric" in error.message


def test_a_boolean_feature_column_is_refused_naming_it() -> None:
    rows = [f"{i},{'true' if i % 3 else 'false'},{'ab'[i % 2]}" for i in range(30)]
    frame = frame_of(csv_bytes("x,flag,label", rows))
    assert pd.api.types.is_bool_dtype(frame["flag"])
    assert not_trainable(frame).field == "flag"


def test_missing_feature_values_are_refused_naming_the_column() -> None:
    rows = [f"{i},{'' if i == 7 else i * 2},{'ab'[i % 2]}" for i in range(30)]
    error = not_trainable(frame_of(csv_bytes("x,w,label", rows)))
    assert error.field == "w"
    assert "1 missing" in error.message


def test_a_target_with_one_class_is_refused() -> None:
    error = not_trainable(frame_of(labelled({"only": 30})))
    assert error.field == "target"
    assert "one class" in error.message and "only" in error.message


def test_a_class_with_too_few_rows_is_refused_naming_it() -> None:
    needed = min_rows_per_class(5, LIMITS.holdout_fraction)
    frame = frame_of(labelled({"common": 30, "rare": needed - 1}))
    error = not_trainable(frame, cv=5)
    assert error.field == "target"
    assert "'rare'" in error.message
    assert f"{needed - 1} rows" in error.message and str(needed) in error.message
    # One more row and it trains.
    assert check_trainable(frame_of(labelled({"common": 30, "rare": needed})), "label", None, 5, LIMITS) == (
        "classification"
    )


def test_the_class_size_rule_follows_cv_and_the_holdout() -> None:
    frame = frame_of(labelled({"a": 12, "b": 12}))
    assert check_trainable(frame, "label", None, 9, LIMITS) == "classification"  # needs 12
    assert not_trainable(frame, cv=10).field == "target"  # needs 13
    wide_holdout = DataLimits(max_rows=1000, max_columns=20, min_rows=20, holdout_fraction=0.4)
    assert not_trainable(frame, cv=9, limits=wide_holdout).field == "target"  # needs 15


def test_regression_with_a_non_numeric_target_is_refused() -> None:
    error = not_trainable(frame_of(GOOD), task="regression")
    assert error.field == "task"
    assert "numeric" in error.message


def test_regression_with_a_constant_target_is_refused() -> None:
    rows = [f"{i},{i % 5},3.5" for i in range(30)]
    error = not_trainable(frame_of(csv_bytes("x,z,y", rows)), target="y", task="regression")
    assert error.field == "target"


def test_the_task_is_inferred_or_taken_from_the_request() -> None:
    rows = [f"{i},{i % 5},{i * 0.37:.2f},{i % 3}" for i in range(40)]
    frame = frame_of(csv_bytes("x,z,price,grade", rows))
    assert check_trainable(frame, "price", None, 5, LIMITS) == "regression"
    assert check_trainable(frame, "grade", None, 5, LIMITS) == "classification"
    assert check_trainable(frame, "grade", "regression", 5, LIMITS) == "regression"
    # Every price is its own class: far too few rows per class.
    assert not_trainable(frame, target="price", task="classification").field == "target"


# --- the store ------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "datasets", LIMITS)


def test_from_settings_uses_the_dataset_settings(tmp_path: Path) -> None:
    settings = load_settings(dataset_dir=tmp_path / "d", dataset_max_rows=7, dataset_max_columns=3,
                             min_training_rows=4, holdout_fraction=0.3)
    store = DatasetStore.from_settings(settings)
    assert store.root == tmp_path / "d"
    assert store.limits == DataLimits(max_rows=7, max_columns=3, min_rows=4, holdout_fraction=0.3)
    with pytest.raises(InvalidInput):
        store.save(csv_bytes("a,b,c,d", ["1,2,3,4"]))


def test_save_stores_a_new_upload_then_recognises_the_same_bytes(store: DatasetStore) -> None:
    meta, created = store.save(GOOD, "flowers.csv")
    assert created is True
    sha = hashlib.sha256(GOOD).hexdigest()
    assert meta["sha256"] == sha
    assert meta["id"] == "ds-" + sha[:12]
    assert meta["filename"] == "flowers.csv"
    assert meta["bytes"] == len(GOOD)

    again, created = store.save(GOOD, "other-name.csv")
    assert created is False
    assert again == meta  # the first upload's metadata, filename included
    assert [p.name for p in store.root.iterdir()] == [meta["id"]]

    other, created = store.save(GOOD + b"0.5,0.5,a\n")
    assert created is True and other["id"] != meta["id"]


def test_the_stored_files_are_the_upload_byte_for_byte_and_world_readable(store: DatasetStore) -> None:
    old_umask = os.umask(0o077)  # a private umask must not make the files private
    try:
        meta, _ = store.save(b"\xef\xbb\xbf" + GOOD)
    finally:
        os.umask(old_umask)
    directory = store.root / meta["id"]
    assert (directory / "data.csv").read_bytes() == b"\xef\xbb\xbf" + GOOD
    assert json.loads((directory / "meta.json").read_text()) == meta
    for name in ("data.csv", "meta.json"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o644
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755


def test_meta_describes_rows_and_columns(store: DatasetStore) -> None:
    raw = b"n,x,name,flag\n1,0.5,a,true\n2,,b,false\n3,2.5,,true\n"
    meta, _ = store.save(raw)
    assert meta["rows"] == 3
    columns = {c["name"]: c for c in meta["columns"]}
    assert list(columns) == ["n", "x", "name", "flag"]
    assert columns["n"] == {"name": "n", "type": "integer", "missing": 0, "distinct": 3, "min": 1, "max": 3}
    assert columns["x"] == {
        "name": "x", "type": "number", "missing": 1, "distinct": 2, "min": 0.5, "max": 2.5
    }
    assert columns["name"]["type"] == "string" and columns["name"]["missing"] == 1
    assert "min" not in columns["name"]
    assert columns["flag"]["type"] == "boolean"


def test_preview_is_json_safe(store: DatasetStore) -> None:
    rows = [f"{i},{'' if i == 1 else i / 2},{'' if i == 2 else 'r' + str(i)}" for i in range(8)]
    raw = csv_bytes("n,x,name", rows)
    meta, _ = store.save(raw)
    preview = meta["preview"]
    assert len(preview) == 5  # the first rows only
    assert preview[0] == {"n": 0, "x": 0.0, "name": "r0"}
    assert preview[1]["x"] is None  # NaN is not JSON
    assert preview[2]["name"] is None
    assert type(preview[0]["n"]) is int  # numpy scalars made plain
    json.dumps(meta, allow_nan=False)  # strict JSON: raises on NaN or numpy types


def test_list_puts_iris_first_and_hides_previews_of_uploads(store: DatasetStore) -> None:
    assert [d["id"] for d in store.list()] == ["iris"]  # no directory yet
    first, _ = store.save(GOOD)
    second, _ = store.save(labelled({"x": 20, "y": 20}))
    (store.root / ".tmp-ds-half-written").mkdir()  # a writer that died
    (store.root / "no-meta").mkdir()
    listed = store.list()
    assert listed[0]["id"] == "iris"
    assert sorted(d["id"] for d in listed[1:]) == sorted([first["id"], second["id"]])
    for entry in listed[1:]:
        assert "preview" not in entry
        assert entry["rows"] in (30, 40)


def test_iris_is_bundled(store: DatasetStore) -> None:
    meta = store.meta("iris")
    assert meta["id"] == "iris" and meta["bundled"] is True
    assert meta["target"] == "species"
    assert meta["rows"] == 150
    assert [c["name"] for c in meta["columns"]] == [*IRIS_FEATURES, "species"]
    assert len(meta["preview"]) == 5
    json.dumps(meta, allow_nan=False)
    frame = store.frame("iris")
    assert frame.shape == (150, 5)
    assert sorted(frame["species"].unique()) == ["setosa", "versicolor", "virginica"]


def test_frame_round_trip(store: DatasetStore) -> None:
    meta, _ = store.save(GOOD)
    frame = store.frame(meta["id"])
    pd.testing.assert_frame_equal(frame, parse_csv(GOOD, LIMITS))
    assert frame.shape == (30, 3)
    assert store.meta(meta["id"]) == meta


def test_frame_refuses_data_modified_after_upload(store: DatasetStore) -> None:
    meta, _ = store.save(GOOD)
    data = store.root / meta["id"] / "data.csv"
    data.write_bytes(GOOD.replace(b",a\n", b",b\n"))  # still valid CSV, different labels
    with pytest.raises(InvalidInput) as info:
        store.frame(meta["id"])
    assert info.value.field == "dataset"
    assert "changed" in info.value.message


@pytest.mark.parametrize("dataset_id", ["ds-000000000000", "titanic", "IRIS", ""])
def test_an_unknown_id_is_not_found(store: DatasetStore, dataset_id: str) -> None:
    store.save(GOOD)
    for call in (store.meta, store.frame):
        with pytest.raises(NotFound) as info:
            call(dataset_id)
        assert info.value.field == "dataset"


@pytest.mark.parametrize("dataset_id", ["../models", "a/b", "/etc", ".tmp-x", ".", "..", "ds-x\x00"])
def test_ids_that_are_not_plain_names_are_not_found(store: DatasetStore, dataset_id: str) -> None:
    meta, _ = store.save(GOOD)
    # A real data set reachable by a path trick must still not be served.
    (store.root / ".tmp-x").mkdir()
    (store.root / ".tmp-x" / "meta.json").write_text(json.dumps(meta))
    for call in (store.meta, store.frame):
        with pytest.raises(NotFound):
            call(dataset_id)


def test_an_overlong_id_is_not_found(store: DatasetStore) -> None:
    store.save(GOOD)  # the root exists, so the lookup reaches the long name
    with pytest.raises(NotFound):
        store.meta("a" * 300)


def test_a_failure_while_saving_leaves_no_directory_behind(store: DatasetStore, monkeypatch) -> None:
    real = datasets_module.write_new_file

    def fail_on_meta(path: Path, data: bytes) -> None:
        if path.name == "meta.json":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(datasets_module, "write_new_file", fail_on_meta)
    with pytest.raises(OSError):
        store.save(GOOD)
    assert list(store.root.iterdir()) == []
    assert [d["id"] for d in store.list()] == ["iris"]
    monkeypatch.undo()
    meta, created = store.save(GOOD)  # a retry after the failure works
    assert created is True and store.frame(meta["id"]).shape == (30, 3)


def test_a_non_os_error_while_saving_leaves_no_directory_behind(store: DatasetStore, monkeypatch) -> None:
    def explode(path: Path, data: bytes) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(datasets_module, "write_new_file", explode)
    with pytest.raises(RuntimeError):
        store.save(GOOD)
    assert list(store.root.iterdir()) == []


def test_a_concurrent_upload_of_the_same_bytes_is_not_an_error(store: DatasetStore, monkeypatch) -> None:
    real = datasets_module.write_new_file
    other = DatasetStore(store.root, LIMITS)
    raced = []

    def race(path: Path, data: bytes) -> None:
        if path.name == "meta.json" and not raced:
            raced.append(True)
            monkeypatch.setattr(datasets_module, "write_new_file", real)
            winner, created = other.save(GOOD)  # finishes first and wins the rename
            assert created is True
        real(path, data)

    monkeypatch.setattr(datasets_module, "write_new_file", race)
    meta, created = store.save(GOOD)
    assert raced and created is False
    assert meta["id"] == "ds-" + hashlib.sha256(GOOD).hexdigest()[:12]
    assert [p.name for p in store.root.iterdir()] == [meta["id"]]  # the loser's temp directory is gone


def test_parse_errors_are_raised_before_anything_is_written(store: DatasetStore) -> None:
    with pytest.raises(InvalidInput) as info:
        store.save(b"x,x\n1,2\n")
    assert info.value.field == "x"
    assert not store.root.exists() or list(store.root.iterdir()) == []
