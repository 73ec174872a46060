"""The functions RQ runs. The API enqueues them by name (``tpotserve.jobs``).

Both validate their payload again: the queue is a trust boundary too.

One training at a time holds because the training queue has exactly one consumer
(the ``worker`` service; RQ runs one job at a time per worker), restarted when it
dies. Nothing here locks against another training. What does need a lock is the
model store, which a training and an activate (on the control queue) both write:
``ModelStore.publishing``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import joblib
import pandas as pd
from rq import get_current_job
from rq.registry import CanceledJobRegistry

from tpotserve import drift, live, shadow
from tpotserve.clock import utc_iso
from tpotserve.datasets import DatasetStore
from tpotserve.errors import Conflict, TpotServeError, TrainingFailed
from tpotserve.model_meta import ModelMeta
from tpotserve.policy import Policy
from tpotserve.schema import TrainingPayload
from tpotserve.registry import ModelRegistry
from tpotserve.settings import Settings, load_settings
from tpotserve.store import POLICY_NAME, SHADOW_NAME, ModelStore, new_version_id

from . import automl, baselines, card, compiler, contract_guard, data, leaderboard

log = logging.getLogger(__name__)


def retrain(payload: dict[str, Any]) -> dict[str, Any]:
    """Run TPOT and the baselines for ``payload``, store the best as a new immutable
    version with its leaderboard and model card, publish it if it passes the gate."""
    settings = load_settings()
    started = time.monotonic()
    report = _Progress(budget_mins=payload.get("max_time_mins"), started=started)
    try:
        run = TrainingPayload.model_validate(payload)
        # The named model's own store: its versions, pointer, gate, retention and lock.
        store = registry_for(settings).store(run.model)
        model = run.model or settings.model_name
        stop_if_canceled()
        if run.reason == "bootstrap" and store.read_pointer_quietly() is not None:
            # A model was published (or restored) after the bootstrap was enqueued.
            report("done", skipped="a model is already current")
            return {"model": model, "version": None, "published": False, "skipped": "a model is already current"}
        with store.publishing():
            # The one training that runs is this one: any versions/.tmp-* is a dead writer's.
            store.remove_stale_temp()
        # Where the search runs: a Dask cluster (fails here, at once, if unreachable) or TPOT's local one.
        with automl.compute_for(settings, run) as compute:
            trained = _train(run, DatasetStore.from_settings(settings), compute, report, store, model)
        report("scoring", cv_score=trained.chosen.cv_score, selected=trained.selection["winner"])
        card_body = card.build(
            run=run.model_copy(update={"model": model}), pipeline=trained.chosen.pipeline, classes=trained.classes,
            X=trained.X, y=trained.y, X_hold=trained.X_hold, y_hold=trained.y_hold,
            training_rows=trained.training_rows, cv_score=trained.chosen.cv_score,
            holdout_score=trained.chosen.holdout_score, selection=trained.selection,
        )
        report("compiling")
        compiled = compile_form(run, trained, store)
        # Gate and publish as one step against an activate (rollback) meanwhile.
        with store.publishing():
            outcome = _publish(store, run, model, trained, card_body, started, report, compiled)
            outcome["shadow"] = shadow_held_back(store, model, outcome)
    except TpotServeError as exc:
        report.fail(exc.message)
        _log_failure(exc.message, started)
        raise
    except Exception as exc:
        _log_failure(f"{type(exc).__name__}: {exc}", started)
        raise
    report("done", cv_score=trained.chosen.cv_score, holdout_score=trained.chosen.holdout_score)
    log.info("training finished", extra={"fields": {
        "event": "job_finished", "job_id": _job_id(), "model": model, "dataset": run.dataset, "task": run.task,
        "version": outcome["version"], "cv_score": outcome["cv_score"], "holdout_score": outcome["holdout_score"],
        "scoring": run.scoring, "selected": trained.selection["winner"], "promoted": outcome["published"],
        "elapsed_s": _since(started),
    }})
    return outcome


@dataclass
class _Trained:
    """What a training found: the split, TPOT's result, the baselines and the choice among them."""

    X: Any
    y: Any
    X_hold: Any
    y_hold: Any
    training_rows: int
    search: automl.SearchResult
    chosen: baselines.Candidate
    classes: list[Any] | None
    selection: dict[str, Any]
    leaderboard: dict[str, Any]
    compute: dict[str, Any]
    feedback_rows: pd.DataFrame | None = None
    """Labelled live rows added to the data set (the policy's ``data.feedback_rows``)."""


def _kept_rows(model: str, limit: int) -> list[bytes]:
    """The model's newest kept labelled live rows (FEEDBACK_KEEP_ROWS), from the job's Redis."""
    job = get_current_job()
    if job is None:
        return []
    return job.connection.lrange(live.labelled_key(model), 0, limit - 1)


def _train(run: TrainingPayload, datasets: DatasetStore, compute: automl.Compute, report: _Progress,
           store: ModelStore, model: str) -> _Trained:
    """Load the data, check it keeps the model's contract (so a refused run costs no search),
    split it, search with TPOT, fit the baselines on the same folds, choose."""
    report("loading_data", compute=compute.info)
    X, y = data.load(datasets, run)
    added = None
    if run.feedback_rows:
        X, y, added = data.extend_with_feedback(X, y, _kept_rows(model, run.feedback_rows), run,
                                                sorted(map(str, pd.unique(y))) if run.task == "classification"
                                                else None)
        report("loading_data", feedback_rows=len(added))
    contract_guard.check_training(store, run, X, y, model)
    X_train, X_hold, y_train, y_hold = data.holdout_split(X, y, run)
    report("searching", rows=len(X), training_rows=len(X_train), holdout_rows=len(X_hold),
           features=X.shape[1], generations_planned=run.generations)
    folds = baselines.cv_splitter(run)
    try:
        result = automl.search(run, X_train, y_train, report=report.generation, compute=compute, cv=folds)
    except automl.NoPipeline as nothing:
        # With baselines the run still has something to publish; without, it fails.
        if not run.baselines:
            raise
        result = automl.SearchResult.nothing_found(nothing)
    if compute.client is not None:
        compute.info["workers_at_end"] = compute.workers_now()
    tpot_pick = None
    if result.pipeline is not None:
        tpot_pick = baselines.Candidate("tpot", result.pipeline, result.cv_score)
        tpot_pick.holdout_score = automl.holdout_score(
            result.pipeline, X_hold, y_hold, run.scoring, result.classes, result.label_encoded
        )
        tpot_pick.predict_ms = baselines.one_row_predict_ms(result.pipeline, X_hold.to_numpy(dtype=float)[:1])
    fitted: list[baselines.Candidate] = []
    if run.baselines:
        report("baselines", tpot_cv_score=result.cv_score, **({"tpot_failure": result.failure}
                                                               if result.failure else {}))
        fitted = baselines.fit_baselines(run, X_train, y_train, X_hold, y_hold, folds)
    candidates = [c for c in (tpot_pick, *fitted) if c is not None]
    chosen, selection = leaderboard.choose(candidates, tpot_failure=result.failure)
    listing, counts = leaderboard.tpot_rows(result.evaluated, result.score_column, result.selected_label)
    board = leaderboard.build(tpot_pick, listing, counts, fitted, selection, run.scoring, run.cv)
    classes = result.classes
    if chosen is not tpot_pick and run.task == "classification":
        classes = [automl.plain(c) for c in chosen.pipeline.classes_]
    return _Trained(X, y, X_hold, y_hold, len(X_train), result, chosen, classes, selection, board,
                    dict(compute.info), added)


def compile_form(run: TrainingPayload, trained: _Trained, store: ModelStore) -> tuple[bytes | None, dict[str, Any]]:
    """The chosen pipeline's compiled form and its meta.json record (``compiler``), outside the
    store's lock (a large forest takes seconds); never fails a training: a pipeline that cannot
    be compiled is published as before, the reason in its record."""
    started = time.monotonic()
    try:
        meta = ModelMeta(task=run.task, features=data.feature_schema(trained.X), classes=trained.classes)
        raw, record = compiler.compile_pipeline(trained.chosen.pipeline, meta)
    except Exception as exc:  # noqa: BLE001 - the model is served all the same, uncompiled
        raw, record = None, {"file": None, "reason": f"{type(exc).__name__}: {exc}"[:500]}
    record["compile_seconds"] = _since(started)
    if raw is not None:
        record.update(sha256=hashlib.sha256(raw).hexdigest(), signature=store.sign(raw))
    log.info("compiled form: %s", record.get("precision") or f"none ({record.get('reason')})")
    return raw, record


def _publish(store: ModelStore, run: TrainingPayload, model: str, trained: _Trained, card_body: dict[str, Any],
             started: float, report: _Progress,
             compiled: tuple[bytes | None, dict[str, Any]] = (None, {})) -> dict[str, Any]:
    """Under the store's lock: check the contract again (an activation during the search may
    have changed the served one), gate, write the version with its documents, point
    current.json, prune."""
    chosen = trained.chosen
    contract = contract_guard.check_training(store, run, trained.X, trained.y, model)
    gate = promotion_gate(store, run, list(trained.X.columns), chosen.holdout_score, trained.X_hold, trained.y_hold)
    report("publishing", cv_score=chosen.cv_score, holdout_score=chosen.holdout_score)
    meta = _meta(run, model, trained, started, gate, compiled[1])
    version = new_version_id()
    documents = _documents(run, model, version, trained, card_body, gate, meta, compiled[0])
    written = store.write_version(version, lambda path: joblib.dump(chosen.pipeline, path), meta, documents)
    if gate["promoted"]:
        store.set_current(version, reason=run.reason if run.reason != "retrain" else "publish", by="trainer")
    pruned = store.prune(run.model_keep)
    return {
        "model": model,
        "version": version,
        "cv_score": chosen.cv_score,
        "holdout_score": chosen.holdout_score,
        "scoring": run.scoring,
        "published": gate["promoted"],
        "gate": gate,
        "pipeline": str(chosen.pipeline),
        "selection": trained.selection,
        "leaderboard": trained.leaderboard,
        "sha256": written["sha256"],
        "training_seconds": meta["training_seconds"],
        "compute": trained.compute,
        "pruned_versions": pruned,
        "contract": contract,
    }


def _meta(run: TrainingPayload, model: str, trained: _Trained, started: float, gate: dict[str, Any],
          compiled: dict[str, Any]) -> dict[str, Any]:
    """The version's meta.json: what it learned from, how it was chosen, the gate's verdict."""
    chosen = trained.chosen
    return ModelMeta(
        created_at=utc_iso(),
        model=model,
        task=run.task,
        dataset=run.dataset,
        dataset_sha256=run.dataset_sha256,
        target=run.target,
        features=data.feature_schema(trained.X),
        classes=trained.classes,
        label_encoded=trained.search.label_encoded if chosen.name == "tpot" else False,
        cv_score=chosen.cv_score,
        holdout_score=chosen.holdout_score,
        scoring=run.scoring,
        training_rows=trained.training_rows,
        holdout_rows=len(trained.X_hold),
        tpot_settings=run.model_dump(exclude={"reason", "model_keep", "model", "baselines", "description", "trigger",
                                              "feedback_rows"}),
        pipeline=str(chosen.pipeline),
        tpot_pipeline=trained.search.pipeline_text,
        selection=trained.selection,
        baselines=run.baselines,
        description=run.description,
        evaluated_pipelines=trained.search.evaluated_pipelines,
        training_seconds=_since(started),
        compute=trained.compute,
        library_versions=automl.library_versions(),
        job_id=_job_id(),
        reason=run.reason,
        **({"trigger": run.trigger} if run.trigger else {}),
        **({"feedback_rows": len(trained.feedback_rows)} if trained.feedback_rows is not None else {}),
        gate=gate,
        compiled=compiled or None,
    ).to_json()


def _documents(run: TrainingPayload, model: str, version: str, trained: _Trained, card_body: dict[str, Any],
               gate: dict[str, Any], meta: dict[str, Any], onnx: bytes | None) -> dict[str, bytes]:
    """The version's documents beside its artifact: leaderboard, card, drift profile, and the
    feedback rows and compiled form where there are some."""
    card_full = {**card_body, "version": version, "gate": gate,
                 **{key: meta[key] for key in ("created_at", "job_id", "reason", "training_seconds",
                                              "library_versions")}}
    documents = {
        "leaderboard.json": _json_bytes({"model": model, "version": version, **trained.leaderboard}),
        "card.json": _json_bytes(card_full),
        "card.md": card.markdown(card_full).encode(),
        # The search rows (not the holdout): what the model learned from, for drift.
        drift.PROFILE_NAME: _json_bytes(drift.reference_profile(
            trained.X.drop(index=trained.X_hold.index), trained.y.drop(index=trained.y_hold.index), run.task)),
    }
    if trained.feedback_rows is not None and len(trained.feedback_rows):
        # The data set this version learned from is the upload plus these rows: kept with it.
        documents[data.FEEDBACK_ROWS_NAME] = trained.feedback_rows.to_csv(index=False).encode()
    if onnx is not None:
        documents["model.onnx"] = onnx
    return documents


def _json_bytes(document: dict[str, Any]) -> bytes:
    """Strict JSON (a NaN or infinite figure is written as null), as the API answers it."""
    return (json.dumps(_finite(document), indent=2, allow_nan=False, default=automl.plain) + "\n").encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _log_failure(error: str, started: float) -> None:
    log.error("training failed", extra={"fields": {"event": "job_failed", "job_id": _job_id(),
                                                   "error": error, "elapsed_s": _since(started)}})


def promotion_gate(
    store: ModelStore,
    run: TrainingPayload,
    features: list[str],
    new_score: float,
    X_hold: Any,
    y_hold: Any,
) -> dict[str, Any]:
    """Decide whether the new version becomes current, and say why.

    auto: publish unless the current model, scored on the same holdout rows,
    does better. The current model can only be compared when it predicts the
    same target from the same features; otherwise the new model wins.
    """
    gate: dict[str, Any] = {"mode": run.promote, "new_holdout_score": new_score, "current_version": None,
                            "current_holdout_score": None}
    if run.promote == "always":
        return {**gate, "promoted": True, "reason": "promote=always"}
    if run.promote == "never":
        return {**gate, "promoted": False, "reason": "promote=never: stored, not served"}
    current = _current_comparable(store, run, features)
    if current is None:
        return {**gate, "promoted": True, "reason": "no comparable current model (different data schema or none)"}
    version, meta, model = current
    try:
        current_score = automl.holdout_score(
            model, X_hold, y_hold, run.scoring, meta.classes, meta.label_encoded
        )
    except Exception as exc:  # noqa: BLE001 - e.g. the old model never saw a class in the holdout
        return {**gate, "current_version": version, "promoted": True,
                "reason": f"the current model could not be scored on the holdout ({type(exc).__name__})"}
    gate.update(current_version=version, current_holdout_score=current_score)
    if new_score >= current_score:
        return {**gate, "promoted": True, "reason": "not worse than the current model on the holdout"}
    return {**gate, "promoted": False, "reason": "worse than the current model on the holdout; current kept"}


def _current_comparable(store: ModelStore, run: TrainingPayload, features: list[str]) -> tuple | None:
    pointer = store.read_pointer_quietly()
    if pointer is None:
        return None
    try:
        meta = ModelMeta.from_json(store.read_meta(pointer.version), pointer.version)
    except TpotServeError:
        return None
    same_schema = meta.feature_names == features and meta.target == run.target and meta.task == run.task
    if not same_schema:
        return None
    try:
        # Verified before unpickling, as in the API. A broken current model must
        # not block its own replacement: it is simply not comparable.
        path = store.verified_artifact(pointer.version, pointer.sha256)
    except TpotServeError:
        return None
    return pointer.version, meta, joblib.load(path)


def shadow_held_back(store: ModelStore, model: str, outcome: dict[str, Any]) -> dict[str, Any] | None:
    """After a training the gate held back: with ``shadow.held_back`` in the model's policy, put
    the new version in shadow (replacing any shadow). Returns shadow.json's new content, or None.
    Never fails the training: a candidate that cannot be shadowed is logged and stays stored."""
    if outcome["published"]:
        return None
    policy = shadow.policy_of(store)
    if policy is None or not policy.shadow.held_back:
        return None
    version = outcome["version"]
    try:
        shadow.check_candidate(store, version, model)
        doc = shadow.document(version, policy.shadow.share, f"held back by the gate: {outcome['gate']['reason']}",
                              "trainer")
        store.write_json(SHADOW_NAME, doc)
    except TpotServeError as exc:
        log.warning("held-back candidate not put in shadow", extra={"fields": {
            "event": "shadow_skipped", "model": model, "version": version, "error": exc.message}})
        return None
    _reset_pair(store, model, version)
    log.info("held-back candidate in shadow", extra={"fields": {
        "event": "shadow_set", "model": model, "version": version, "share": doc["share"], "by": "trainer"}})
    return doc


def set_shadow(version: str, model: str | None = None, share: float | None = None, reason: str = "request",
               by: str = "request") -> dict[str, Any]:
    """Put a stored version of a model in shadow: shadow.json names it, every API worker's shadow
    runner answers ``share`` of the served rows with it too (None: the policy's ``shadow.share``,
    else SHADOW_SHARE). Refused for a missing version, the served one, or another contract."""
    settings = load_settings()
    try:
        store = registry_for(settings).existing_store(model)
        name = model or settings.model_name
        with store.publishing():  # the served version cannot change between the check and the write
            shadow.check_candidate(store, str(version), name)
            doc = shadow.document(str(version), share if share is not None else shadow.default_share(store, settings),
                                  reason, by)
            store.write_json(SHADOW_NAME, doc)
    except TpotServeError as exc:
        _record_job_error(exc)
        raise
    _reset_pair(store, name, str(version))
    log.info("shadow set", extra={"fields": {"event": "shadow_set", "model": name, "version": version,
                                             "share": doc["share"], "reason": reason, "by": by}})
    return {"model": name, "shadow": doc}


def clear_shadow(model: str | None = None, reason: str = "request", by: str = "request") -> dict[str, Any]:
    """Take a model's shadow out (the scheduler enqueues it when ``tpotserve.shadow.evaluate``
    says "drop"). Returns what was in shadow (None: nothing was)."""
    settings = load_settings()
    try:
        store = registry_for(settings).existing_store(model)
        with store.publishing():
            previous = shadow.read(store)
            store.write_json(SHADOW_NAME, None)
    except TpotServeError as exc:
        _record_job_error(exc)
        raise
    name = model or settings.model_name
    log.info("shadow cleared", extra={"fields": {"event": "shadow_cleared", "model": name,
                                                 "version": previous["version"] if previous else None,
                                                 "reason": reason, "by": by}})
    return {"model": name, "cleared": previous, "reason": reason, "by": by}


def _reset_pair(store: ModelStore, model: str, version: str) -> None:
    """A new shadow's pair counts start from nothing (best effort: Redis is the job's own)."""
    job = get_current_job()
    pointer = store.read_pointer_quietly()
    if job is None or pointer is None:
        return
    try:
        shadow.reset_pair(job.connection, model, pointer.version, version)
    except Exception as exc:  # noqa: BLE001 - the shadow is set; stale counts are only stale
        log.warning("could not reset the shadow's counts: %s", exc)


def _record_job_error(exc: TpotServeError) -> None:
    """What the API reads back to answer with the domain error of a control job."""
    job = get_current_job()
    if job is not None:
        job.meta["error"] = exc.message
        job.meta["error_code"] = exc.code
        job.meta["error_details"] = exc.details
        job.save_meta()


def activate(version: str, model: str | None = None, replace_contract: bool = False, reason: str = "activate",
             by: str = "request", details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Point a model's current.json at one of its stored versions (rollback), after
    verifying its hash and, unless ``replace_contract``, that it keeps the served contract.
    ``model`` None: the default model."""
    settings = load_settings()
    try:
        store = registry_for(settings).existing_store(model)
        with store.publishing():
            contract_guard.check_activation(store, str(version), model or settings.model_name, replace_contract)
            pointer = store.set_current(str(version), reason=reason, by=by, details=details)
            in_shadow = shadow.read(store)
            if in_shadow is not None and in_shadow["version"] == pointer.version:
                store.write_json(SHADOW_NAME, None)  # promoted: the shadow is now the served version
                log.info("shadow cleared", extra={"fields": {
                    "event": "shadow_cleared", "model": model or settings.model_name, "version": pointer.version,
                    "reason": f"activated ({reason})", "by": by}})
    except TpotServeError as exc:
        _record_job_error(exc)
        raise
    return {"model": model or settings.model_name, "version": pointer.version, "sha256": pointer.sha256}


def promote_shadow(model: str, version: str, details: dict[str, Any], by: str = "scheduler") -> dict[str, Any]:
    """Serve the model's shadow ``version`` (promotion on live evidence): a normal activation,
    logged in activations.jsonl with ``details`` (the test that decided it), and the shadow
    ended, both under the store's lock. Refused if ``version`` is no longer the shadow (it
    was cleared or replaced meanwhile) or would change the served contract."""
    settings = load_settings()
    store = registry_for(settings).existing_store(model)
    with store.publishing():
        shadow = store.read_json(SHADOW_NAME) or {}
        if shadow.get("version") != version:
            raise Conflict(f"{version!r} is no longer in shadow for {model!r}; nothing was activated", field="version")
        contract_guard.check_activation(store, version, model, replace=False)
        previous = store.read_pointer_quietly()
        pointer = store.set_current(version, reason="promotion", by=by, details=details)
        store.write_json(SHADOW_NAME, None)
    return {"model": model, "version": pointer.version, "previous": previous.version if previous else None,
            "promoted": True, "details": details}


def set_policy(model: str, policy: dict[str, Any] | None, by: str = "request") -> dict[str, Any]:
    """Write (None: remove) a model's retraining policy, ``policy.json`` beside its current.json.
    The scheduler reads it on its next tick. ``set_at`` anchors an interval schedule."""
    settings = load_settings()
    store = registry_for(settings).existing_store(model)
    if policy is None:
        store.write_json(POLICY_NAME, None)
        return {"model": model, "policy": None}
    checked = Policy.model_validate(policy)  # the API checked it; a queued job is checked again
    document = {"policy": checked.model_dump(mode="json"), "set_at": utc_iso(), "set_at_epoch": time.time(),
                "by": by}
    with store.publishing():
        store.write_json(POLICY_NAME, document)
    return {"model": model, **document}


def registry_for(settings: Settings) -> ModelRegistry:
    return ModelRegistry.from_settings(settings)


def stop_if_canceled() -> None:
    """End the job before any work if DELETE /jobs canceled it after a worker had dequeued
    it but before RQ marked it started (RQ then runs it all the same): RQ's own canceled
    registry still lists it."""
    job = get_current_job()
    if job is not None and job.id in CanceledJobRegistry(job.origin, connection=job.connection):
        raise TrainingFailed("canceled by request (DELETE /jobs) before it started")


class _Progress:
    """Writes the job's progress into job.meta for GET /jobs/<id>.

    Fields accumulate across stages (rows, generation, best score...), so a
    reader always sees the latest value of each.
    """

    def __init__(self, budget_mins: Any, started: float) -> None:
        self.job = get_current_job()
        self.started = started
        self.state: dict[str, Any] = {"budget_mins": budget_mins}

    def __call__(self, stage: str, **extra: Any) -> None:
        self.state.update(extra)
        self.state["stage"] = stage
        self.state["elapsed_s"] = round(time.monotonic() - self.started, 1)
        if self.job is None:
            return
        self.job.meta["progress"] = dict(self.state)
        self.job.save_meta()

    def generation(self, summary: dict[str, Any]) -> None:
        """Called by the TPOT evolver after each generation."""
        self("searching", **summary)

    def fail(self, message: str) -> None:
        if self.job is None:
            return
        self.job.meta["error"] = message
        self.job.save_meta()


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


def _job_id() -> str | None:
    job = get_current_job()
    return job.id if job else None
