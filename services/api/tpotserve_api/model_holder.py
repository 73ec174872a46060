"""A model holder: one named model in one Gunicorn worker; load beside, verify, then swap.

The worker's :class:`~tpotserve_api.model_pool.ModelPool` calls :meth:`ModelHolder.refresh`
of every model it holds every ``MODEL_POLL_INTERVAL_S`` (a read of one small file per
model). When the pointer names a new version, the holder
loads it beside the one it serves, checks its sha256 and a smoke prediction,
and only then swaps one reference. A failed load keeps the old model and is
recorded for /readyz. Requests never block on loading: they read whichever
model is current at the moment they start.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import joblib

from tpotserve.clock import utc_iso
from tpotserve.drift import PROFILE_NAME, Binner
from tpotserve.errors import ArtifactRejected, ModelNotReady, NotFound, TpotServeError
from tpotserve.model_meta import ModelMeta
from tpotserve.registry import ModelRegistry
from tpotserve.store import ModelStore, Pointer

from . import metrics
from .compiled import CompiledEngine, load_engine
from .fast_path import compile_fast_proba, pin_single_thread, smoke_row
from .loaded_model import LoadedModel

log = logging.getLogger(__name__)


def load_version(registry: ModelRegistry, name: str, version: str) -> LoadedModel:
    """A stored version of ``name``, verified and loaded exactly as a served one is (sha256 and
    signature before unpickling, a smoke prediction after), without serving it: the shadow
    runner's loader (``shadow_runner``)."""
    store = registry.store(name)
    try:
        sha256 = str(store.read_meta(version)["sha256"])
    except (NotFound, KeyError) as exc:
        raise ArtifactRejected(f"{version}: no usable metadata ({exc})") from exc
    return ModelHolder(registry, name)._load(store, Pointer(version=version, sha256=sha256))


class ModelHolder:
    """Holds one named model in one worker and follows that model's pointer."""

    def __init__(self, registry: ModelRegistry, name: str, compiled_inference: bool = True) -> None:
        self.registry = registry
        self.name = name
        self.compiled_inference = compiled_inference
        self._current: LoadedModel | None = None
        self._last_error: dict[str, Any] | None = None
        self._failed_pointer: Pointer | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> ModelStore:
        # Resolved each time: the default model's store moves once, when the trainer
        # migrates a single-model volume (same versions, so nothing is reloaded).
        return self.registry.store(self.name)

    # --- serving -----------------------------------------------------------
    def current(self) -> LoadedModel:
        model = self._current
        if model is None:
            if self.name == self.registry.default_name:
                raise ModelNotReady("no model is loaded yet; the first training may still be running")
            raise ModelNotReady(f"model {self.name!r} has no current version yet (none was published)")
        return model

    def status(self) -> dict[str, Any]:
        model = self._current
        return {
            "model_loaded": model is not None,
            "model_version": model.version if model else None,
            "loaded_at": utc_iso(model.loaded_at) if model else None,
            "last_load_error": self._last_error,
        }

    # --- following the pointer ---------------------------------------------
    def refresh(self) -> bool:
        """Load the pointer's version if it changed; True when a new model was swapped in."""
        with self._lock:  # the poll thread and a first request must not load twice
            store = self.store
            try:
                pointer = store.read_pointer()
            except ArtifactRejected as exc:
                self._record_failure(None, str(exc))
                return False
            if pointer is None:
                return False
            current = self._current
            if current is not None and pointer.same_model(current.pointer):
                # The pointer is back on what we serve (e.g. a bad activate was undone).
                self._failed_pointer = None
                self._last_error = None
                return False
            if pointer.same_model(self._failed_pointer):
                return False  # versions are immutable: the same pointer fails the same way
            started = time.perf_counter()
            try:
                loaded = self._load(store, pointer)
            except Exception as exc:  # noqa: BLE001 - any failure must leave the old model serving
                self._record_failure(pointer, f"{type(exc).__name__}: {exc}")
                metrics.record_model_load_failed(self.name)
                return False
            self._current = loaded
            metrics.record_model_loaded(
                self.name, current.version if current else None, pointer.version, time.perf_counter() - started
            )
            self._failed_pointer = None
            self._last_error = None
            log.info(
                "serving model %s version %s (loaded in %.0f ms)",
                self.name,
                pointer.version,
                (time.perf_counter() - started) * 1000,
            )
            return True

    def _load(self, store: ModelStore, pointer: Pointer) -> LoadedModel:
        try:
            meta = ModelMeta.from_json(store.read_meta(pointer.version), pointer.version)
        except NotFound as exc:
            raise ArtifactRejected(str(exc)) from exc
        if meta.sha256 != pointer.sha256:
            raise ArtifactRejected(f"{pointer.version}: pointer and metadata disagree on sha256")
        # Hash first: joblib.load runs pickle, which must only ever see verified bytes.
        path = store.verified_artifact(pointer.version, pointer.sha256)
        model = joblib.load(path)
        pinned = pin_single_thread(model)
        fast_proba, how = compile_fast_proba(model, meta)
        loaded = LoadedModel(pointer=pointer, meta=meta, model=model, fast_proba=fast_proba, name=self.name,
                             binner=self._binner(store, meta))
        pins = f" ({', '.join(pinned)}=1)" if pinned else ""
        log.info("model %s version %s predicts with %s%s", self.name, pointer.version, how, pins)
        loaded.compiled, loaded.serving = self._compiled(store, pointer, model, meta, loaded.infer_pipeline)
        loaded.serving["pipeline_path"] = how
        if loaded.compiled is None:
            metrics.record_compiled_fallback(self.name, loaded.serving.get("fallback", "unknown"))
        log.info("model %s version %s: engine %s%s", self.name, pointer.version, loaded.serving["engine"],
                 f" ({loaded.serving['reason']})" if loaded.serving.get("reason") else
                 f" up to {loaded.compiled.max_rows} rows" if loaded.compiled else "")
        predictions, _ = loaded.predict([smoke_row(meta)])
        if len(predictions) != 1:
            raise ArtifactRejected(f"{pointer.version}: smoke prediction returned {predictions!r}")
        return loaded

    def _compiled(self, store: ModelStore, pointer: Pointer, model: Any, meta: ModelMeta,
                  pipeline_path: Any) -> tuple[CompiledEngine | None, dict[str, Any]]:
        """The version's verified compiled engine, or None and why it is served without one."""
        plain = {"engine": "scikit-learn"}
        if not self.compiled_inference:
            return None, {**plain, "fallback": "disabled", "reason": "COMPILED_INFERENCE is off"}
        try:
            record = store.compiled_record(pointer.version)
            if record is None:
                return None, {**plain, "fallback": "not_compiled",
                              "reason": "the version has no compiled form (published before compiled inference; "
                                        "`tpotserve compile` adds one)"}
            if not record.get("file"):
                return None, {**plain, "fallback": "not_compilable", "reason": record.get("reason")}
            found = store.read_compiled(pointer.version)
        except TpotServeError as exc:
            return None, {**plain, "fallback": "rejected", "reason": str(exc)}
        if found is None:
            return None, {**plain, "fallback": "not_compiled", "reason": "no compiled form"}
        raw, record = found
        return load_engine(raw, record, model, meta, pipeline_path)

    def _binner(self, store: ModelStore, meta: ModelMeta) -> Binner | None:
        """The drift bins of the version's reference profile; None for a version without one
        (trained before profiles) or with one that does not fit: served all the same."""
        if PROFILE_NAME not in meta.files:
            return None
        try:
            profile = json.loads(store.read_document(str(meta.version), PROFILE_NAME))
            if [f["name"] for f in profile["features"]] != meta.feature_names:
                raise ValueError("its features are not the model's")
            return Binner(profile)
        except (TpotServeError, ValueError, KeyError, TypeError) as exc:
            log.warning("model %s version %s: no drift counts, its profile is unusable: %s",
                        self.name, meta.version, exc)
            return None

    def _record_failure(self, pointer: Pointer | None, message: str) -> None:
        self._failed_pointer = pointer
        self._last_error = {
            "version": pointer.version if pointer else None,
            "message": message,
            "at": utc_iso(),
        }
        log.error("refused model %s version %s: %s", self.name, pointer.version if pointer else "?", message)
