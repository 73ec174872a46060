"""Rows in and out of the command line: CSV and JSON parsing (with the format sniffed), the
prediction answers joined back to their rows, and feedback files."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .client import JSON


FORMATS = ("csv", "json")


class UsageError(Exception):
    """A problem with the command line or the local input: exit code 2."""


# --- input: rows from JSON or CSV ----------------------------------------------
def detect_format(path: str | None, text: str, given: str | None = None) -> str:
    """``given``, else the file's extension, else a look at the text (``[`` or ``{`` means JSON)."""
    if given:
        return given
    suffix = Path(path).suffix.lower().lstrip(".") if path and path != "-" else ""
    if suffix in FORMATS:
        return suffix
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"


def _reject_constant(name: str) -> Any:
    raise UsageError(f"the JSON input contains {name}, which is not a JSON number")


def parse_json_rows(text: str) -> list[dict[str, Any]]:
    """Rows from JSON: a list of objects, one object, or ``{"instances": [...]}``."""
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise UsageError(f"the input is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("instances"), list):
        data = data["instances"]
    rows = data if isinstance(data, list) else [data]
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UsageError(f"JSON row {index} is a {type(row).__name__}, not an object")
    return rows


def _cell(value: str) -> Any:
    """A CSV cell as JSON: finite numbers become numbers, empty cells None, the rest text."""
    value = value.strip()
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    # "nan" and "inf" parse as floats but are not JSON numbers: let the API name the field.
    return number if number - number == 0 else value


def parse_csv_rows(text: str) -> list[dict[str, Any]]:
    """Rows from CSV with a header row; numeric cells become numbers."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        raise UsageError("the CSV input is empty") from None
    except csv.Error as exc:
        raise UsageError(f"the CSV input cannot be read: {exc}") from exc
    names = [name.strip() for name in header]
    if not any(names) or "" in names:
        raise UsageError("the CSV header has an empty column name")
    rows = []
    try:
        for line in reader:
            if not line or not any(cell.strip() for cell in line):
                continue
            if len(line) != len(names):
                raise UsageError(
                    f"CSV line {reader.line_num} has {len(line)} values; the header has {len(names)}"
                )
            rows.append({name: _cell(cell) for name, cell in zip(names, line)})
    except csv.Error as exc:
        raise UsageError(f"the CSV input cannot be read (line {reader.line_num}): {exc}") from exc
    return rows


def parse_rows(text: str, fmt: str) -> list[dict[str, Any]]:
    """Rows to predict from ``text`` in ``fmt`` (``csv`` or ``json``); at least one."""
    rows = parse_json_rows(text) if fmt == "json" else parse_csv_rows(text)
    if not rows:
        raise UsageError("the input has no rows to predict")
    return rows


# --- output: rows with their predictions -----------------------------------------
def result_rows(rows: Sequence[dict[str, Any]], answer: JSON, flat: bool) -> list[dict[str, Any]]:
    """Each input row followed by its ``prediction`` and, for classifiers, its probabilities.

    ``flat`` (for CSV) gives one ``probability_<class>`` column per class; otherwise a
    ``probabilities`` object.
    """
    probabilities = answer.get("probabilities") or [None] * len(rows)
    out = []
    for row, prediction, probs in zip(rows, answer["predictions"], probabilities):
        item = {**row, "prediction": prediction}
        if probs is not None:
            if flat:
                item.update({f"probability_{label}": p for label, p in probs.items()})
            else:
                item["probabilities"] = probs
        out.append(item)
    return out


def format_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV with a header of every key, in order of first appearance."""
    fields: dict[str, None] = {}
    for row in rows:
        fields.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def format_json(rows: Sequence[dict[str, Any]]) -> str:
    """A JSON list of objects, one per line."""
    return "[\n" + ",\n".join("  " + json.dumps(row) for row in rows) + "\n]\n"


def parse_feedback(text: str, fmt: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(items, rows) for ``POST /feedback`` from JSON (a list of items, or ``{"feedback": [...],
    "rows": [...]}``) or from CSV with the columns ``id`` and ``label`` or ``value``."""
    if fmt == "json":
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            raise UsageError(f"the input is not valid JSON: {exc}") from exc
        if isinstance(data, list):
            items, rows = data, None
        elif isinstance(data, dict) and data and set(data) <= {"feedback", "rows"}:
            items, rows = data.get("feedback", []), data.get("rows")
        else:
            raise UsageError('the JSON input is a list of {"id", "label" | "value"} items, '
                             'or {"feedback": [...], "rows": [...]}')
        for key, value in (("feedback", items), ("rows", rows)):
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, dict) for v in value)):
                raise UsageError(f"the JSON input's {key} must be a list of objects")
        if not items and not rows:
            raise UsageError("the input has no feedback")
        return items, rows
    table = parse_csv_rows(text)
    if not table:
        raise UsageError("the input has no feedback")
    columns = set(table[0])
    truth = next((name for name in ("label", "value") if name in columns), None)
    if "id" not in columns or truth is None:
        raise UsageError("the CSV input needs an id column (X-Prediction-ID:row) and a label or value column")
    return [{"id": "" if row["id"] is None else str(row["id"]), truth: row[truth]} for row in table], None


# --- commands -------------------------------------------------------------------
def read_input(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text") from exc


