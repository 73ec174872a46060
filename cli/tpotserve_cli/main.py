"""The ``tpotserve`` command line: predict, retrain, follow jobs, list and activate models.

    tpotserve predict rows.csv                  # CSV in, CSV out (rows + prediction + probabilities)
    echo '{"SepalLength": 5.1, ...}' | tpotserve predict --output-format csv
    tpotserve retrain --max-time-mins 1 --wait  # live progress on stderr, the job's JSON on stdout
    tpotserve models | tpotserve activate VERSION | tpotserve jobs JOB_ID | tpotserve cancel JOB_ID
    tpotserve datasets upload data.csv | tpotserve datasets list
    tpotserve registry                          # every named model; --model NAME on predict, retrain,
    tpotserve predict rows.csv --model housing  # models, current and activate picks one (default: the
                                                # server's default model, through the unnamed endpoints)
    tpotserve leaderboard | tpotserve card      # what the training tried and the model card of a version
    tpotserve drift --window 3600               # live inputs against the training rows, per feature
    tpotserve feedback truth.csv | tpotserve quality   # the truth for answers given; live accuracy
    tpotserve compile [--model NAME] [--dry-run]       # where the trainer runs: compiled forms for old versions

The gateway and key come from --url / --api-key, else TPOTSERVE_URL (default
http://127.0.0.1:8080) and TPOTSERVE_API_KEY (else API_KEY). Exit codes: 0 ok,
1 an API error, an unreachable gateway or a failed/canceled job, 2 a usage
error (bad arguments, unreadable input), 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from .client import DEFAULT_URL, JSON, Client, TpotServeError, check_model_name

PROG = "tpotserve"
MODEL_COLUMNS = ("current", "version", "created", "dataset", "task", "cv_score", "holdout_score", "winner")
LEADERBOARD_COLUMNS = (
    "selected", "rank", "name", "source", "cv_score", "holdout_score", "complexity", "predict_ms", "note",
)
DRIFT_COLUMNS = ("feature", "kind", "rows", "js_distance", "psi", "out_of_range", "verdict")
QUALITY_METRICS = {"classification": ("accuracy",), "regression": ("mae", "rmse", "r2")}
REGISTRY_COLUMNS = (
    "default", "name", "current_version", "versions", "dataset", "target", "task", "holdout_score", "contract",
)
ENV_URL = "TPOTSERVE_URL"
ENV_KEYS = ("TPOTSERVE_API_KEY", "API_KEY")
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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table with left-aligned columns."""
    cells = [[str(h) for h in headers], *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells) + "\n"


def _score(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _ms(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _share(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def models_table(models: JSON) -> str:
    """``GET /models`` as a table, newest first, the current version marked with ``*``."""
    rows = [
        (
            "*" if meta.get("current") else "",
            meta.get("version"),
            meta.get("created_at"),
            meta.get("dataset"),
            meta.get("task"),
            _score(meta.get("cv_score")),
            _score(meta.get("holdout_score")),
            (meta.get("selection") or {}).get("winner"),
        )
        for meta in reversed(models.get("versions") or [])
    ]
    return format_table(MODEL_COLUMNS, rows)


def _note(row: JSON) -> str:
    if row.get("error"):
        return "error: " + " ".join(str(row["error"]).split())[:80]
    return "TPOT's pick" if row.get("tpot_pick") else ""


def leaderboard_table(board: JSON) -> str:
    """A version's leaderboard: its rows ranked by CV score (the published one marked ``*``),
    then the selection's summary and TPOT's counts."""
    folds = f", {board['cv_folds']}-fold CV" if board.get("cv_folds") else ""
    head = f"model {board.get('model')}, version {board.get('version')}: scoring {board.get('scoring')}{folds}\n"
    rows = [
        (
            "*" if row.get("selected") else "",
            row.get("rank"),
            row.get("name"),
            row.get("source"),
            _score(row.get("cv_score")),
            _score(row.get("holdout_score")),
            row.get("complexity"),
            _ms(row.get("predict_ms")),
            _note(row),
        )
        for row in board.get("rows") or []
    ]
    lines = [head + format_table(LEADERBOARD_COLUMNS, rows).rstrip("\n")]
    selection = board.get("selection") or {}
    if selection.get("summary"):
        lines.append(f"selection: {selection['summary']}")
    tpot = board.get("tpot") or {}
    if tpot:
        shown = f"; {tpot['shown']} shown (top {tpot.get('top_k')})" if tpot.get("shown") is not None else ""
        lines.append(
            f"TPOT: {tpot.get('total', 0)} pipelines, {tpot.get('evaluated', 0)} evaluated, "
            f"{tpot.get('invalid', 0)} invalid, {tpot.get('timed_out', 0)} timed out{shown}"
        )
    elif board.get("baselines") is False:
        lines.append("baselines: not fitted (baselines=false)")
    return "\n".join(lines) + "\n"


def drift_table(report: JSON) -> str:
    """``GET /drift``: one line per feature (JS distance, PSI, share out of the training range,
    verdict), then the model's verdict and its drifted share."""
    served = "served" if report.get("served", True) else "not served"
    head = (f"model {report.get('model')}, version {report.get('version')} ({served}): "
            f"{report.get('rows', 0)} rows from {report.get('since')} to {report.get('until')}\n")
    rows = [
        (
            f.get("feature"),
            f.get("kind"),
            f.get("rows"),
            _score(f.get("js_distance")),
            _score(f.get("psi")),
            _share(f.get("out_of_range_share")),
            f.get("verdict"),
        )
        for f in report.get("features") or []
    ]
    features = report.get("features") or []
    thresholds = report.get("thresholds") or {}
    verdict = report.get("verdict")
    if verdict == "not_enough_rows":
        tail = f"verdict: not_enough_rows ({report.get('rows', 0)} rows; at least {report.get('min_rows')} needed)"
    else:
        drifted = report.get("drifted_features") or []
        tail = (f"verdict: {verdict}, drifted share {_share(report.get('drifted_share'))} "
                f"({len(drifted)} of {len(features)} features{': ' + ', '.join(drifted) if drifted else ''})")
    tail += (f"; thresholds: JS distance > {thresholds.get('js_distance')} or PSI > {thresholds.get('psi')}"
             if thresholds else "")
    return head + format_table(DRIFT_COLUMNS, rows) + tail + "\n"


def quality_table(report: JSON) -> str:
    """``GET /quality``: live quality from feedback per version, beside its holdout score."""
    task = str(report.get("task") or "classification")
    metrics = QUALITY_METRICS.get(task, QUALITY_METRICS["regression"])
    head = (f"model {report.get('model')} ({task}), serving {report.get('served_version')}: "
            f"feedback on answers from {report.get('since')} to {report.get('until')}\n")
    versions = report.get("versions") or []
    if not versions:
        body = "no feedback in this window\n"
    else:
        rows = [
            ("*" if v.get("served") else "", v.get("version"), v.get("rows"),
             *(_score(v.get(m)) for m in metrics), _score(v.get("holdout_score")), v.get("scoring"))
            for v in versions
        ]
        body = format_table(("served", "version", "rows", *metrics, "holdout_score", "scoring"), rows)
    skipped = report.get("skipped") or {}
    if skipped:
        body += "skipped: " + ", ".join(f"{reason}: {n}" for reason, n in skipped.items()) + "\n"
    return head + body


def shadow_table(report: JSON) -> str:
    """``GET /shadow``: the version in shadow, its agreement and latency, both versions' live
    scores on the same labelled rows, and the decision with its test."""
    doc = report.get("shadow")
    if not doc:
        return f"model {report.get('model')}: no version in shadow\n"
    lines = [f"model {report.get('model')}: {doc.get('version')} in shadow of {report.get('served_version')} "
             f"since {doc.get('since')} (share {_share(doc.get('share'))}; {doc.get('reason')}, by {doc.get('by')})"]
    figures = report.get("figures") or {}
    if figures:
        latency = figures.get("latency") or {}
        lines.append(f"compared rows {figures.get('rows', 0)}, agreement {_share(figures.get('agreement'))}; "
                     f"shadow latency p50 {_ms(latency.get('p50_ms'))} ms, p95 {_ms(latency.get('p95_ms'))} ms "
                     f"over {latency.get('calls', 0)} calls")
        labelled = figures.get("labelled") or {}
        metrics = ("accuracy",) if report.get("task") == "classification" else ("mse", "rmse", "r2")
        rows = [(role, version, labelled.get("rows", 0), *(_score((labelled.get(role) or {}).get(m)) for m in metrics))
                for role, version in (("served", figures.get("served_version")),
                                      ("shadow", figures.get("shadow_version")))]
        lines.append(format_table(("role", "version", "labelled_rows", *metrics), rows).rstrip("\n"))
    evaluation = report.get("evaluation") or {}
    if evaluation:
        promotion = report.get("promotion") or {}
        enabled = "automatic promotion on" if promotion.get("enabled") else "automatic promotion off"
        lines.append(f"decision: {evaluation.get('decision')} ({evaluation.get('reason')}); {enabled}")
        p_value = evaluation.get("p_value")
        shown = f"{p_value:.3g}" if isinstance(p_value, (int, float)) else "n/a (no row where they differ)"
        lines.append(f"test: {evaluation.get('test')}, p = {shown}")
    return "\n".join(lines) + "\n"


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


def registry_table(registry: JSON) -> str:
    """``GET /registry`` as a table, in the server's order (the default model first, marked ``*``)."""
    rows = [
        (
            "*" if entry.get("default") else "",
            entry.get("name"),
            entry.get("current_version") or "(none)",
            entry.get("versions"),
            entry.get("dataset"),
            entry.get("target"),
            entry.get("task"),
            _score(entry.get("holdout_score")),
            contract_brief(entry),
        )
        for entry in registry.get("models") or []
    ]
    return format_table(REGISTRY_COLUMNS, rows)


def contract_brief(entry: JSON) -> str:
    """A registry entry's contract in a few words: "4 features, 3 classes; MIXED: 2 versions differ"."""
    contract = entry.get("contract")
    if not isinstance(contract, dict):
        return ""
    text = f"{len(contract.get('features') or [])} features"
    if contract.get("classes") is not None:
        text += f", {len(contract['classes'])} classes"
    others = entry.get("other_contract_versions") or []
    if entry.get("mixed_contracts"):
        text += f"; MIXED: {len(others)} version{'' if len(others) == 1 else 's'} differ{'s' if len(others) == 1 else ''}"
    return text


def datasets_table(datasets: Sequence[JSON]) -> str:
    """``GET /datasets`` as a table."""
    rows = [
        (
            ds.get("id"),
            ds.get("filename") or ("(bundled)" if ds.get("bundled") else ""),
            ds.get("rows"),
            len(ds.get("columns") or []),
            ds.get("created_at") or "",
        )
        for ds in datasets
    ]
    return format_table(("id", "filename", "rows", "columns", "created"), rows)


# --- job progress ---------------------------------------------------------------
class JobProgress:
    """A tqdm bar on stderr, fed with job views by :meth:`Client.wait`.

    The search stops at its generation count or its time budget, whichever comes
    first, so the bar shows the larger of the two fractions; the text after it
    says which generation, the best CV score so far, and the time against the budget.
    """

    def __init__(self, job_id: str, file: TextIO | None = None) -> None:
        self.job_id = job_id
        self.bar = tqdm(
            total=100,
            file=file or sys.stderr,
            desc="waiting",
            bar_format="{percentage:3.0f}%|{bar:20}| {desc}",
        )
        self._elapsed: tuple[float, float] | None = None  # (elapsed_s reported, when we saw it)

    def elapsed(self, progress: JSON, running: bool) -> float | None:
        """The job's elapsed seconds, moved on by our clock between the worker's reports."""
        reported = progress.get("elapsed_s")
        if not isinstance(reported, (int, float)):
            return None
        if self._elapsed is None or self._elapsed[0] != reported:
            self._elapsed = (float(reported), time.monotonic())
        return reported + (time.monotonic() - self._elapsed[1] if running else 0.0)

    def __call__(self, view: JSON) -> None:
        status = view.get("status") or "?"
        progress = view.get("progress") or {}
        running = status == "started" and progress.get("stage") == "searching"
        fraction = 0.0
        parts = []
        generation, planned = progress.get("generation"), progress.get("generations_planned")
        if isinstance(planned, int) and planned > 0:
            parts.append(f"gen {generation or 0}/{planned}")
            fraction = (generation or 0) / planned
        best = progress.get("best_cv_score")
        if isinstance(best, (int, float)):
            parts.append(f"best_cv {best:.4f}")
        elapsed, budget = self.elapsed(progress, running), progress.get("budget_mins")
        if elapsed is not None:
            if isinstance(budget, (int, float)) and budget > 0:
                parts.append(f"{elapsed:.0f}s/{budget * 60:.0f}s")
                if running:
                    fraction = max(fraction, elapsed / (budget * 60))
            else:
                parts.append(f"{elapsed:.0f}s")
        if status == "finished":
            fraction = 1.0
        self.bar.n = round(min(fraction, 1.0 if status == "finished" else 0.99) * 100)
        label = (progress.get("stage") or status) if status == "started" else status
        self.bar.set_description_str(": ".join([label, ", ".join(parts)]) if parts else label, refresh=True)

    def close(self) -> None:
        """End the bar's line."""
        self.bar.close()


# --- commands -------------------------------------------------------------------
def _read_input(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text") from exc


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    text = _read_input(args.file)
    fmt = detect_format(args.file, text, args.format)
    rows = parse_rows(text, fmt)
    answer = client.predict(rows, model=args.model)
    out_fmt = args.output_format or fmt
    results = result_rows(rows, answer, flat=out_fmt == "csv")
    ids = getattr(answer, "row_ids", lambda: [])()
    if args.ids and ids:
        results = [{"id": row_id, **row} for row_id, row in zip(ids, results)]
    sys.stdout.write(format_csv(results) if out_fmt == "csv" else format_json(results))
    plural = "" if len(results) == 1 else "s"
    by = f"{args.model}, version " if args.model else ""
    print(f"{len(results)} prediction{plural} by model {by}{answer.get('model_version')}", file=sys.stderr)
    if ids:
        print(f"prediction id {answer.prediction_id} (feedback ids {ids[0]}"  # type: ignore[attr-defined]
              f"{f' to {ids[-1]}' if len(ids) > 1 else ''})", file=sys.stderr)
    for warning in answer.get("warnings") or []:
        print(f"warning: {warning.get('field')}: {warning.get('message')}", file=sys.stderr)
    return 0


def follow(client: Client, job_id: str, args: argparse.Namespace) -> int:
    """Wait for a job with a progress bar; print its JSON; exit 1 unless it finished."""
    bar = JobProgress(job_id)
    said: list[bool] = []

    def progress(view: JSON) -> None:
        if view.get("trigger") and not said:  # once, above the bar: why the scheduler started it
            said.append(True)
            bar.bar.write(f"job {job_id}: started by the scheduler: {trigger_text(view['trigger'])}",
                          file=sys.stderr)
        bar(view)

    try:
        view = client.wait(
            job_id, poll_interval=args.poll_interval, timeout=args.wait_timeout, on_progress=progress
        )
    except TimeoutError as exc:
        bar.close()
        print(f"{PROG}: error: {exc}; it keeps running (tpotserve cancel {job_id} stops it)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped waiting; job {job_id} keeps running (tpotserve cancel {job_id} stops it)",
              file=sys.stderr)
        return 130
    bar.close()
    _print_json(view)
    status = view.get("status")
    if status == "finished":
        result = view.get("result") or {}
        gate = result.get("gate") or {}
        model = (view.get("request") or {}).get("model")
        selection = result.get("selection") or {}
        winner = (f"winner {selection['winner']} ({selection.get('source')}), "
                  if selection.get("winner") else "")
        print(
            f"job {job_id} finished: version {result.get('version')}{f' of model {model}' if model else ''}, "
            f"cv_score {_score(result.get('cv_score'))}, "
            f"holdout_score {_score(result.get('holdout_score'))}, {winner}"
            f"{'published' if result.get('published') else 'not published'} ({gate.get('reason', '')})",
            file=sys.stderr,
        )
        return 0
    if view.get("error"):
        reason = f"{status}: {' '.join(str(view['error']).split())}"
    else:
        reason = "was canceled" if status == "canceled" else str(status)
    print(f"{PROG}: error: job {job_id} {reason}", file=sys.stderr)
    return 1


def cmd_retrain(client: Client, args: argparse.Namespace) -> int:
    answer = client.retrain(
        args.dataset,
        model=args.model,
        target=args.target,
        task=args.task,
        max_time_mins=args.max_time_mins,
        generations=args.generations,
        population_size=args.population_size,
        cv=args.cv,
        scoring=args.scoring,
        promote=args.promote,
        queue=True if args.queue else None,
        baselines=args.baselines,
        description=args.description,
        random_state=args.random_state,
        replace_contract=True if args.replace_contract else None,
    )
    if not args.wait:
        _print_json(answer)
        return 0
    print(f"job {answer['job_id']} queued", file=sys.stderr)
    return follow(client, answer["job_id"], args)


def cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    if args.wait:
        return follow(client, args.job_id, args)
    _print_json(client.job(args.job_id))
    return 0


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    answer = client.cancel(args.job_id)
    print(f"job {answer.get('id')} {answer.get('status')}")
    return 0


def _print_listing(data: Any, table: Callable[[Any], str], as_json: bool) -> int:
    """An answer as JSON (``--json``) or as its table."""
    if as_json:
        _print_json(data)
    else:
        sys.stdout.write(table(data))
    return 0


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.models(model=args.model), models_table, args.json)


def cmd_registry(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.registry(), registry_table, args.json)


def cmd_current(client: Client, args: argparse.Namespace) -> int:
    _print_json(client.current_model(model=args.model))
    return 0


def cmd_activate(client: Client, args: argparse.Namespace) -> int:
    answer = client.activate(args.version, model=args.model, replace_contract=args.replace_contract)
    of = f" of model {args.model}" if args.model else ""
    if answer.get("activated"):
        print(f"activated {answer.get('version')}{of}")
    else:
        job = answer.get("job_id")
        print(f"activation of {answer.get('version')}{of} queued as job {job} (tpotserve jobs {job})")
    return 0


def cmd_leaderboard(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.leaderboard(model=args.model, version=args.version), leaderboard_table, args.json)


def cmd_card(client: Client, args: argparse.Namespace) -> int:
    if args.json:
        _print_json(client.card(model=args.model, version=args.version, fmt="json"))
        return 0
    text = client.card(model=args.model, version=args.version)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _since(args: argparse.Namespace) -> dict[str, Any]:
    return {"window": args.window, "since": args.since}


def cmd_drift(client: Client, args: argparse.Namespace) -> int:
    report = client.drift(model=args.model, version=args.version, **_since(args))
    return _print_listing(report, drift_table, args.json)


def cmd_quality(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.quality(model=args.model, **_since(args)), quality_table, args.json)


def cmd_feedback(client: Client, args: argparse.Namespace) -> int:
    text = _read_input(args.file)
    items, rows = parse_feedback(text, detect_format(args.file, text, args.format))
    answer = client.feedback(items, model=args.model, rows=rows)
    if args.json:
        _print_json(answer)
    else:
        skipped = answer.get("skipped") or []
        print(f"model {answer.get('model')}: {answer.get('accepted', 0)} accepted, {len(skipped)} skipped, "
              f"{answer.get('kept_rows', 0)} rows kept for retraining")
    for skip in answer.get("skipped") or []:
        of = f" (id {skip['id']})" if skip.get("id") is not None else ""
        print(f"skipped {skip.get('in')}[{skip.get('index')}]{of}: {skip.get('reason')}", file=sys.stderr)
    return 0


def trigger_text(trigger: JSON) -> str:
    """Why an automatic training ran, in one line."""
    figures = trigger.get("figures") or {}
    kind = trigger.get("kind")
    if kind == "schedule":
        what = f"cron {trigger['cron']}" if trigger.get("cron") else f"every {trigger.get('every_s')} s"
        return f"schedule ({what}, due {trigger.get('due')})"
    if kind == "drift":
        return (f"drift: {_share(figures.get('drifted_share'))} of the features drifted "
                f"({', '.join(figures.get('drifted_features') or [])}) on {figures.get('rows')} rows")
    if kind == "quality":
        return (f"quality: live {figures.get('scoring')} {_score(figures.get('live_score'))} vs holdout "
                f"{_score(figures.get('holdout_score'))} on {figures.get('rows')} labelled rows")
    if kind == "feedback":
        return f"feedback: {figures.get('new_rows')} new labelled rows (threshold {figures.get('threshold')})"
    return str(kind)


def policy_text(view: JSON) -> str:
    """A policy and the scheduler's view of it, for a person."""
    policy, state = view.get("policy"), view.get("scheduler") or {}
    if policy is None:
        return f"model {view.get('model')}: no policy (it trains only on request)\n"
    lines = [f"model {view.get('model')}: policy set {view.get('set_at')}" + ("" if policy.get("enabled", True)
                                                                            else " (disabled)")]
    schedule = policy.get("schedule")
    if schedule:
        when = schedule.get("cron") and f"cron {schedule['cron']} ({schedule.get('timezone', 'UTC')})"
        lines.append(f"  schedule: {when or 'every ' + str(schedule.get('every_s')) + ' s'}; next due "
                     f"{state.get('next_due') or '-'}")
    for kind, trigger in (policy.get("triggers") or {}).items():
        if trigger:
            figures = (state.get("triggers") or {}).get(kind) or {}
            shown = ", ".join(f"{k}={v}" for k, v in figures.items() if k not in ("fired", "drifted_features"))
            lines.append(f"  trigger {kind}: {json.dumps(trigger)}; now: "
                         f"{'FIRED' if figures.get('fired') else 'not fired'}{'; ' + shown if shown else ''}")
    budget = {k: v for k, v in (policy.get("budget") or {}).items() if v is not None}
    lines.append(f"  min spacing: {policy.get('min_spacing_s')} s; budget: {json.dumps(budget)}")
    held = state.get("held_by_spacing")
    if held:
        lines.append(f"  held back by the spacing until {held.get('until')}: {', '.join(held.get('fired', []))}")
    for job in state.get("enqueued") or []:
        lines.append(f"  enqueued {job.get('job_id')} ({job.get('trigger')})")
    shadow = state.get("shadow")
    if shadow:
        on = "automatic promotion on" if shadow.get("promotion_enabled") else "automatic promotion off"
        lines.append(f"  shadow {shadow.get('version')}: {shadow.get('decision', '-')} ({shadow.get('reason', '')}); {on}")
    for kind, last in sorted((state.get("last") or {}).items()):
        lines.append(f"  last {kind} training: job {last.get('job_id')} at {last.get('at')}")
    if state.get("checked_at"):
        lines.append(f"  scheduler checked at {state['checked_at']}")
    return "\n".join(lines) + "\n"


def cmd_policy(client: Client, args: argparse.Namespace) -> int:
    if args.action == "set":
        text = _read_input(args.file)
        try:
            policy = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"the policy is not JSON: {exc}") from None
        view = client.set_policy(policy, model=args.model)
    elif args.action == "delete":
        view = client.delete_policy(model=args.model)
    else:
        view = client.policy(model=args.model)
    if view.get("written") is False:
        print(f"the write is queued as job {view.get('job_id')} (tpotserve jobs {view.get('job_id')})")
        return 0
    return _print_listing(view, policy_text, args.json)
def cmd_shadow(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.shadow(model=args.model), shadow_table, args.json)


def cmd_shadow_set(client: Client, args: argparse.Namespace) -> int:
    answer = client.set_shadow(args.version, model=args.model, share=args.share)
    of = f" of model {args.model}" if args.model else ""
    if args.json:
        _print_json(answer)
    elif answer.get("done"):
        doc = answer.get("shadow") or {}
        print(f"{doc.get('version')}{of} in shadow, answering {_share(doc.get('share'))} of the served rows")
    else:
        print(f"shadow of {args.version}{of} queued as job {answer.get('job_id')} (tpotserve jobs {answer.get('job_id')})")
    return 0


def cmd_shadow_clear(client: Client, args: argparse.Namespace) -> int:
    answer = client.clear_shadow(model=args.model)
    if args.json:
        _print_json(answer)
    elif not answer.get("done"):
        print(f"clearing queued as job {answer.get('job_id')} (tpotserve jobs {answer.get('job_id')})")
    else:
        cleared = answer.get("cleared")
        print(f"shadow {cleared.get('version')} cleared" if cleared else "no version was in shadow")
    return 0


def cmd_datasets_list(client: Client, args: argparse.Namespace) -> int:
    return _print_listing(client.datasets(), datasets_table, args.json)


def cmd_datasets_upload(client: Client, args: argparse.Namespace) -> int:
    if args.file == "-":
        meta = client.upload_dataset(sys.stdin.buffer.read(), args.name or "stdin.csv")
    else:
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"cannot read {args.file}: no such file")
        meta = client.upload_dataset(path, args.name)
    if args.json:
        _print_json(meta)
    else:
        state = "uploaded" if meta.get("created") else "already stored"
        print(f"{meta.get('id')}  {state}: {meta.get('rows')} rows, {len(meta.get('columns') or [])} columns")
    return 0


# --- the parser -------------------------------------------------------------------
def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--url", default=default, help=f"the gateway (env {ENV_URL}; default {DEFAULT_URL})")
    parser.add_argument("--api-key", default=default, help="bearer key (env TPOTSERVE_API_KEY, else API_KEY)")
    parser.add_argument(
        "--timeout", type=float, default=default, help="seconds to wait for each HTTP answer (default 60)"
    )


def _model_name(value: str) -> str:
    """argparse's type for --model: a bad name is a usage error (exit 2), nothing is sent."""
    try:
        return check_model_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--model", type=_model_name, metavar="NAME",
        help=f"{help_text} (default: the server's default model; tpotserve registry lists them)",
    )


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="follow the job with a progress bar to its end")
    parser.add_argument("--poll-interval", type=float, default=1.0, metavar="S", help="seconds between polls")
    parser.add_argument("--wait-timeout", type=float, metavar="S", help="give up waiting after S seconds")


def _window_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--window", type=int, metavar="S", help="the last S seconds (default: DRIFT_WINDOW_S)")
    group.add_argument("--since", metavar="T", help="from T: an ISO 8601 time or epoch seconds")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser; connection options go before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)  # so a value given before the command survives
    parser = argparse.ArgumentParser(
        prog=PROG, description="Talk to a tpotserve gateway: predictions, training jobs, model versions."
    )
    _connection_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _job_commands(commands, common)
    _version_commands(commands, common)
    _watch_commands(commands, common)
    _data_commands(commands, common)
    return parser


def _job_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Predictions, training jobs."""
    p = commands.add_parser("predict", parents=[common], help="predict rows from a CSV or JSON file or stdin")
    p.add_argument("file", nargs="?", default="-", help="CSV or JSON file; '-' or omitted: stdin")
    p.add_argument("--format", choices=FORMATS, help="input format (default: by extension, else sniffed)")
    p.add_argument("--output-format", choices=FORMATS, help="output format (default: the input's)")
    _model_option(p, "the named model to predict with")
    p.add_argument("--ids", action="store_true",
                   help="add an id column: <X-Prediction-ID>:<row>, what tpotserve feedback takes")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser("retrain", parents=[common], help="start a training job (admin key)")
    _model_option(p, "the named model to train a new version of; a new name creates it")
    p.add_argument("--dataset", help="'iris' or an uploaded data set's id (default: the data set of the "
                                     "model's current version, else iris)")
    p.add_argument(
        "--target", help="the column to predict (needed for an upload the model was not trained on)"
    )
    p.add_argument("--task", choices=("classification", "regression"), help="default: inferred")
    p.add_argument("--max-time-mins", type=float, metavar="M")
    p.add_argument("--generations", type=int, metavar="N")
    p.add_argument("--population-size", type=int, metavar="N")
    p.add_argument("--cv", type=int, metavar="K")
    p.add_argument("--scoring", help="e.g. accuracy, f1_macro, r2, neg_mean_absolute_error")
    p.add_argument("--promote", choices=("auto", "always", "never"), help="default: auto (the gate decides)")
    p.add_argument("--queue", action="store_true", help="queue behind a running training instead of a 409")
    p.add_argument("--no-baselines", dest="baselines", action="store_const", const=False, default=None,
                   help="publish TPOT's pick only (default: the best by CV score of it and the baselines)")
    p.add_argument("--description", metavar="TEXT", help="free text for the model card (at most 2000 characters)")
    p.add_argument("--random-state", type=int, metavar="N",
                   help="seed of TPOT, the baselines, the CV folds and the holdout split")
    p.add_argument("--replace-contract", action="store_true",
                   help="train even if the data set changes the model's features, target, task or classes "
                        "(otherwise a 409; a new --model name is usually what you want)")
    _wait_options(p)
    p.set_defaults(func=cmd_retrain)

    p = commands.add_parser("jobs", parents=[common], help="print a job's JSON (status, progress, result)")
    p.add_argument("job_id")
    _wait_options(p)
    p.set_defaults(func=cmd_jobs)

    p = commands.add_parser("cancel", parents=[common], help="cancel a queued or running job (admin key)")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)


def _version_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """The stored versions: list, activate, and what each one says of itself."""
    p = commands.add_parser("models", parents=[common], help="list stored model versions, current marked *")
    p.add_argument("--json", action="store_true", help="print GET /models (--model: its versions) as JSON")
    _model_option(p, "the named model whose versions to list")
    p.set_defaults(func=cmd_models)

    p = commands.add_parser("registry", parents=[common], help="list the named models, default marked *")
    p.add_argument("--json", action="store_true", help="print GET /registry as JSON")
    p.set_defaults(func=cmd_registry)

    p = commands.add_parser("current", parents=[common], help="print the served version's metadata as JSON")
    _model_option(p, "the named model")
    p.set_defaults(func=cmd_current)

    p = commands.add_parser("activate", parents=[common], aliases=["rollback"],
                            help="make a stored version current (admin key)")
    p.add_argument("version")
    _model_option(p, "the named model the version belongs to")
    p.add_argument("--replace-contract", action="store_true",
                   help="activate even a version whose features, target, task or classes differ from the "
                        "served one's (otherwise a 409)")
    p.set_defaults(func=cmd_activate)

    p = commands.add_parser("leaderboard", parents=[common],
                            help="what a version's training tried, ranked by CV score, the published one marked *")
    _model_option(p, "the named model")
    p.add_argument("--version", default="current", help="a stored version (default: current)")
    p.add_argument("--json", action="store_true", help="print the leaderboard's JSON")
    p.set_defaults(func=cmd_leaderboard)

    p = commands.add_parser("card", parents=[common], help="print a version's model card (Markdown)")
    _model_option(p, "the named model")
    p.add_argument("--version", default="current", help="a stored version (default: current)")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=cmd_card)


def _watch_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Watching the served model and keeping it good: drift, quality, feedback, policy, shadow."""
    p = commands.add_parser("drift", parents=[common], help="live inputs against the training rows, per feature")
    _model_option(p, "the named model")
    _window_options(p)
    p.add_argument("--version", help="another stored version than the served one")
    p.add_argument("--json", action="store_true", help="print GET /drift as JSON")
    p.set_defaults(func=cmd_drift)

    p = commands.add_parser("quality", parents=[common], help="live quality from feedback, beside the holdout score")
    _model_option(p, "the named model")
    _window_options(p)
    p.add_argument("--json", action="store_true", help="print GET /quality as JSON")
    p.set_defaults(func=cmd_quality)

    p = commands.add_parser("feedback", parents=[common], help="send the truth for answers given (predict key)")
    p.add_argument("file", nargs="?", default="-",
                   help="JSON items or a CSV with columns id,label|value; '-' or omitted: stdin")
    p.add_argument("--format", choices=FORMATS, help="input format (default: by extension, else sniffed)")
    _model_option(p, "the named model the answers came from")
    p.add_argument("--json", action="store_true", help="print the answer's JSON")
    p.set_defaults(func=cmd_feedback)

    p = commands.add_parser("policy", parents=[common],
                            help="a model's retraining policy: show, set FILE (JSON) or delete (admin key)")
    p.add_argument("action", nargs="?", choices=("show", "set", "delete"), default="show")
    p.add_argument("file", nargs="?", default="-", help="set: the policy as JSON; '-' or omitted: stdin")
    _model_option(p, "the named model (default: the default model)")
    p.add_argument("--json", action="store_true", help="print GET /models/<name>/policy as JSON")
    p.set_defaults(func=cmd_policy)

    p = commands.add_parser("shadow", parents=[common],
                            help="the version in shadow: agreement, latency, paired live scores, decision; "
                                 "'shadow set VERSION' / 'shadow clear' (admin key)")
    _model_option(p, "the named model")
    p.add_argument("--json", action="store_true", help="print GET /shadow as JSON")
    p.set_defaults(func=cmd_shadow)
    shadow_commands = p.add_subparsers(dest="shadow_command", required=False, metavar="{set,clear}")
    s = shadow_commands.add_parser("set", parents=[common], help="put a stored version in shadow (admin key)")
    s.add_argument("version")
    s.add_argument("--share", type=float, metavar="X",
                   help="share of served rows it answers too, 0 < X <= 1 (default: the policy's, else SHADOW_SHARE)")
    _model_option(s, "the named model the version belongs to")
    s.add_argument("--json", action="store_true", help="print the answer's JSON")
    s.set_defaults(func=cmd_shadow_set)
    s = shadow_commands.add_parser("clear", parents=[common], help="take the shadow out (admin key)")
    _model_option(s, "the named model")
    s.add_argument("--json", action="store_true", help="print the answer's JSON")
    s.set_defaults(func=cmd_shadow_clear)


def _data_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Data sets, and compiled forms for versions published before compiled inference."""
    p = commands.add_parser("datasets", help="upload or list training data sets")
    datasets = p.add_subparsers(dest="datasets_command", required=True, metavar="{upload,list}")
    d = datasets.add_parser("list", parents=[common], help="the bundled iris and every upload")
    d.add_argument("--json", action="store_true", help="print GET /datasets as JSON")
    d.set_defaults(func=cmd_datasets_list)
    d = datasets.add_parser("upload", parents=[common], help="upload a CSV (admin key)")
    d.add_argument("file", help="the CSV file; '-': stdin")
    d.add_argument("--name", help="the file name to record (default: the file's)")
    d.add_argument("--json", action="store_true", help="print the data set's full JSON")
    d.set_defaults(func=cmd_datasets_upload)

    p = commands.add_parser("compile", add_help=False,
                            help="add compiled forms (ONNX) to stored versions published before compiled inference; "
                                 "runs on the model volume where the trainer runs (docs/cli.md)")
    p.add_argument("compile_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)


def cmd_compile(argv: list[str]) -> int:
    """``tpotserve compile``: not an HTTP call; the trainer's one-shot on the model volume
    (``tpotserve_trainer.compile_versions``), so it needs the trainer's packages."""
    try:
        from tpotserve_trainer.compile_versions import main as compile_main
    except ImportError:
        print(f"{PROG}: error: compile runs where the trainer is installed (it needs skl2onnx and the model "
              "volume); in compose: docker compose exec worker python -m tpotserve_trainer.compile_versions",
              file=sys.stderr)
        return 2
    return compile_main(argv)


def make_client(args: argparse.Namespace, environ: dict[str, str] | os._Environ = os.environ) -> Client:
    """The client for the parsed flags, falling back on the environment."""
    url = args.url or environ.get(ENV_URL) or DEFAULT_URL
    key = args.api_key or next((environ[name] for name in ENV_KEYS if environ.get(name)), None)
    timeout = (5.0, args.timeout) if args.timeout else (5.0, 60.0)
    return Client(url, key, timeout=timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compile"]:  # its own options (the trainer's parser), no gateway
        return cmd_compile(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(make_client(args), args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TpotServeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
