"""What a training tried and what it picked: the leaderboard and the choice of what to publish.

The leaderboard ranks, by CV score on the same folds, TPOT's best evaluated
pipelines (top ``TOP_K``) and the baselines; it counts the pipelines TPOT could
not score. ``choose`` picks the model to publish among TPOT's pick and the
baselines by CV score, never by holdout: the holdout is the gate's, and picking
the best of several on it would flatter the winner.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tpotserve.errors import TrainingFailed

from .baselines import COST_RANK, Candidate

TOP_K = 10
"""How many of TPOT's evaluated pipelines the leaderboard lists."""
TIE_TOLERANCE = 1e-9
"""CV scores closer than this are a tie (the same folds give bit-identical means for equal models)."""


def choose(candidates: list[Candidate], tpot_failure: str | None = None) -> tuple[Candidate, dict[str, Any]]:
    """The candidate to publish and a record of why.

    Best CV score wins; within ``TIE_TOLERANCE`` the cheaper model to serve does
    (baselines by ``COST_RANK`` before TPOT's pick when equally fast to call, else
    the lower measured one-row predict time). ``tpot_failure``: why TPOT has no
    pick among the candidates, said in the record. No candidate with a score is a
    failed training (the reasons are in the message).
    """
    scored = [c for c in candidates if c.cv_score is not None]
    if not scored:
        reasons = ([f"tpot: {tpot_failure}"] if tpot_failure else []) + [
            f"{c.name}: {c.error}" for c in candidates if c.error]
        raise TrainingFailed("no candidate could be scored" + (f" ({'; '.join(reasons)})" if reasons else ""))
    best_score = max(c.cv_score for c in scored)
    tied = [c for c in scored if best_score - c.cv_score <= TIE_TOLERANCE]
    winner = min(tied, key=lambda c: (c.predict_ms if c.predict_ms is not None else float("inf"),
                                      COST_RANK.get(c.name, len(COST_RANK))))
    others = [c for c in scored if c is not winner]
    runner_up = max(others, key=lambda c: c.cv_score) if others else None
    tpot = next((c for c in candidates if c.name == "tpot"), None)
    baselines = [c for c in scored if c.source == "baseline"]
    best_baseline = max(baselines, key=lambda c: c.cv_score) if baselines else None
    record = {
        "winner": winner.name,
        "source": winner.source,
        "cv_score": winner.cv_score,
        "runner_up": runner_up.name if runner_up else None,
        "margin": round(winner.cv_score - runner_up.cv_score, 6) if runner_up else None,
        "tpot_cv_score": tpot.cv_score if tpot else None,
        "best_baseline": best_baseline.name if best_baseline else None,
        "best_baseline_cv_score": best_baseline.cv_score if best_baseline else None,
        "tie": len(tied) > 1,
        "tpot_failure": tpot_failure,
        "rule": "best CV score on the search's folds; ties go to the model cheaper to serve",
    }
    record["summary"] = _summary(record)
    return winner, record


def _summary(record: dict[str, Any]) -> str:
    if record["runner_up"] is None:
        said = f"{record['winner']} was the only candidate with a CV score"
    elif record["tie"]:
        said = (f"{record['winner']} tied on CV score with {record['runner_up']} "
                "and is cheaper to serve")
    else:
        said = (f"{record['winner']} won on CV score by {record['margin']:.4g} "
                f"over {record['runner_up']}")
    if record["tpot_failure"]:
        said = f"TPOT scored no pipeline, so a baseline is published: {said}"
    return said


def tpot_rows(evaluated: pd.DataFrame | None, score_column: str, selected: Any = None) -> tuple[list[dict], dict]:
    """TPOT's top ``TOP_K`` evaluated pipelines and its counts (evaluated, invalid, timed out).

    ``evaluated``: TPOT's ``evaluated_individuals``. ``selected``: the row label of
    TPOT's own pick, marked in the rows.
    """
    if evaluated is None or score_column not in evaluated:
        return [], {"total": 0, "evaluated": 0, "invalid": 0, "timed_out": 0}
    scores = pd.to_numeric(evaluated[score_column], errors="coerce")
    errors = evaluated["Eval Error"].astype("string") if "Eval Error" in evaluated else pd.Series(dtype="string")
    counts = {
        "total": int(len(evaluated)),
        "evaluated": int(scores.notna().sum()),
        "invalid": int((errors == "INVALID").sum()),
        "timed_out": int((errors == "TIMEOUT").sum()),
    }
    top = scores.dropna().sort_values(ascending=False, kind="stable").head(TOP_K)
    rows = []
    for label in top.index:
        record = evaluated.loc[label]
        rows.append({
            "name": f"tpot:{label}",
            "source": "tpot",
            "cv_score": float(top[label]),
            "complexity": _complexity(record.get("Instance")),
            "eval_seconds": _seconds(record),
            "generation": _int(record.get("Generation")),
            "pipeline": _one_line(record.get("Instance")),
            "tpot_pick": bool(label == selected),
        })
    return rows, counts


def build(tpot_pick: Candidate | None, tpot_listing: list[dict], counts: dict, baselines: list[Candidate],
          chosen: dict[str, Any], scoring: str, cv: int) -> dict[str, Any]:
    """The leaderboard: one ranked table of TPOT's pipelines and the baselines, and the choice."""
    rows = [dict(row) for row in tpot_listing]
    pick_row = next((row for row in rows if row.get("tpot_pick")), None)
    if tpot_pick is not None:
        pick = {"holdout_score": tpot_pick.holdout_score, "fit_seconds": tpot_pick.fit_seconds,
                "predict_ms": tpot_pick.predict_ms}
        if pick_row is None:  # TPOT's pick is outside its own top k (e.g. a simpler tie it preferred)
            pick_row = {"name": "tpot", "source": "tpot", "cv_score": tpot_pick.cv_score,
                        "pipeline": _one_line(tpot_pick.pipeline), "tpot_pick": True}
            rows.append(pick_row)
        pick_row.update(pick)
    for baseline in baselines:
        rows.append({**baseline.summary(), "pipeline": _one_line(baseline.pipeline) if baseline.pipeline else None,
                     "complexity": _complexity(baseline.pipeline) if baseline.pipeline is not None else None})
    rows.sort(key=lambda row: -row["cv_score"] if row.get("cv_score") is not None else float("inf"))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        row["published_candidate"] = row.get("tpot_pick", False) or row["source"] == "baseline"
        row["selected"] = (row["name"] == chosen["winner"]) or (chosen["winner"] == "tpot" and row.get("tpot_pick", False))
    return {
        "scoring": scoring,
        "cv_folds": cv,
        "rows": rows,
        "tpot": {**counts, "shown": len(tpot_listing), "top_k": TOP_K, "failure": chosen.get("tpot_failure")},
        "baselines": [b.name for b in baselines],
        "selection": chosen,
    }


def _complexity(pipeline: Any) -> int | None:
    """TPOT's own node count of a pipeline (``tpot.objectives.number_of_nodes_objective``)."""
    if pipeline is None:
        return None
    from tpot.objectives import number_of_nodes_objective

    try:
        return int(number_of_nodes_objective(pipeline))
    except Exception:  # noqa: BLE001 - a shape it cannot walk: no figure rather than no leaderboard
        return None


def _seconds(record: pd.Series) -> float | None:
    try:
        value = float(record["Completed Timestamp"]) - float(record["Submitted Timestamp"])
    except (KeyError, TypeError, ValueError):
        return None
    return round(value, 3) if value == value else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _one_line(pipeline: Any) -> str | None:
    if pipeline is None:
        return None
    return " ".join(str(pipeline).split())
