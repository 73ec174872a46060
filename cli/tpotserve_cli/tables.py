"""What the command line prints for people: the tables of models, leaderboards, drift,
quality, shadows, registries and data sets, and the policy and trigger lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .client import JSON


MODEL_COLUMNS = ("current", "version", "created", "dataset", "task", "cv_score", "holdout_score", "winner")


LEADERBOARD_COLUMNS = (
    "selected", "rank", "name", "source", "cv_score", "holdout_score", "complexity", "predict_ms", "note",
)


DRIFT_COLUMNS = ("feature", "kind", "rows", "js_distance", "psi", "out_of_range", "verdict")


QUALITY_METRICS = {"classification": ("accuracy",), "regression": ("mae", "rmse", "r2")}


REGISTRY_COLUMNS = (
    "default", "name", "current_version", "versions", "dataset", "target", "task", "holdout_score", "contract",
)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table with left-aligned columns."""
    cells = [[str(h) for h in headers], *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells) + "\n"


def score_text(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _ms(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def share_text(value: Any) -> str:
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
            score_text(meta.get("cv_score")),
            score_text(meta.get("holdout_score")),
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
            score_text(row.get("cv_score")),
            score_text(row.get("holdout_score")),
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
            score_text(f.get("js_distance")),
            score_text(f.get("psi")),
            share_text(f.get("out_of_range_share")),
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
        tail = (f"verdict: {verdict}, drifted share {share_text(report.get('drifted_share'))} "
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
             *(score_text(v.get(m)) for m in metrics), score_text(v.get("holdout_score")), v.get("scoring"))
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
             f"since {doc.get('since')} (share {share_text(doc.get('share'))}; {doc.get('reason')}, by {doc.get('by')})"]
    figures = report.get("figures") or {}
    if figures:
        latency = figures.get("latency") or {}
        lines.append(f"compared rows {figures.get('rows', 0)}, agreement {share_text(figures.get('agreement'))}; "
                     f"shadow latency p50 {_ms(latency.get('p50_ms'))} ms, p95 {_ms(latency.get('p95_ms'))} ms "
                     f"over {latency.get('calls', 0)} calls")
        labelled = figures.get("labelled") or {}
        metrics = ("accuracy",) if report.get("task") == "classification" else ("mse", "rmse", "r2")
        rows = [(role, version, labelled.get("rows", 0), *(score_text((labelled.get(role) or {}).get(m)) for m in metrics))
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
            score_text(entry.get("holdout_score")),
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


def trigger_text(trigger: JSON) -> str:
    """Why an automatic training ran, in one line."""
    figures = trigger.get("figures") or {}
    kind = trigger.get("kind")
    if kind == "schedule":
        what = f"cron {trigger['cron']}" if trigger.get("cron") else f"every {trigger.get('every_s')} s"
        return f"schedule ({what}, due {trigger.get('due')})"
    if kind == "drift":
        return (f"drift: {share_text(figures.get('drifted_share'))} of the features drifted "
                f"({', '.join(figures.get('drifted_features') or [])}) on {figures.get('rows')} rows")
    if kind == "quality":
        return (f"quality: live {figures.get('scoring')} {score_text(figures.get('live_score'))} vs holdout "
                f"{score_text(figures.get('holdout_score'))} on {figures.get('rows')} labelled rows")
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


