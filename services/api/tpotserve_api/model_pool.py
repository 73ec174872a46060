"""Every model one Gunicorn worker serves: a holder per name, lazily loaded, LRU-bounded.

What a worker holds per loaded model: the unpickled pipeline, its metadata and, when
one was verified, a compiled predict_proba shortcut (docs/models.md has the measured
memory of ten). ``MAX_LOADED_MODELS`` bounds how many. The default model (MODEL_NAME)
is loaded before the worker accepts requests and never dropped, so the book's
``POST /predict`` never waits for a load. Other models are loaded at start while
there is room, when the poller finds a new one while there is room, or else on
their first request (that request waits for the load: verify, unpickle, smoke
prediction); the least recently used one is dropped to make room.

One daemon thread refreshes every held model each poll interval: each one follows its
own pointer and swaps on its own, so a bad artifact of one model never touches another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from tpotserve.errors import ModelNotReady, NotFound
from tpotserve.registry import ModelRegistry, check_model_name

from .loaded_model import LoadedModel
from .model_holder import ModelHolder

log = logging.getLogger(__name__)


class ModelPool:
    """The holders of one worker, most recently used last."""

    def __init__(self, registry: ModelRegistry, poll_interval_s: float, max_loaded: int,
                 compiled_inference: bool = True) -> None:
        self.registry = registry
        self.compiled_inference = compiled_inference
        self.default_name = registry.default_name
        self.poll_interval_s = poll_interval_s
        self.max_loaded = max(1, max_loaded)
        self._holders: OrderedDict[str, ModelHolder] = OrderedDict()
        self._lock = threading.Lock()  # guards _holders; never held while loading
        self._loading: dict[str, threading.Lock] = {}
        self._thread: threading.Thread | None = None
        self.default = self._holder(self.default_name)

    # --- serving ---------------------------------------------------------------------
    def get(self, name: str | None = None) -> LoadedModel:
        """The model ``name`` serves now (the default model when None).

        NotFound for a name the registry does not have; ModelNotReady for one without a
        current version (or whose only version failed to load)."""
        if name is None or name == self.default_name:
            return self.default.current()
        with self._lock:
            holder = self._holders.get(name)
            if holder is not None:
                self._holders.move_to_end(name)
        if holder is None:
            return self._load_on_request(name).current()
        try:
            return holder.current()
        except ModelNotReady:
            # Held before its first version was published: look now rather than answer
            # 503 until the next poll (one small read, only on this path).
            holder.refresh()
            return holder.current()

    def status(self) -> dict[str, dict[str, Any]]:
        """What this worker holds, per model name."""
        with self._lock:
            holders = list(self._holders.values())
        return {holder.name: holder.status() for holder in holders}

    # --- loading -----------------------------------------------------------------------
    def _load_on_request(self, name: str) -> ModelHolder:
        check_model_name(name)
        self.registry.existing_store(name)  # NotFound before anything is loaded
        started = time.perf_counter()
        holder = self._holder(name)
        log.info("model %s: its first request here waited %.0f ms for it", name, (time.perf_counter() - started) * 1000)
        return holder

    def _holder(self, name: str) -> ModelHolder:
        """The holder of ``name``, loaded (made room for) if this worker does not hold it."""
        with self._lock:
            gate = self._loading.setdefault(name, threading.Lock())
        with gate:  # two requests for one unloaded model load it once
            with self._lock:
                if name in self._holders:
                    return self._holders[name]
            holder = ModelHolder(self.registry, name, self.compiled_inference)
            holder.refresh()  # outside the pool's lock: other models keep serving meanwhile
            with self._lock:
                self._holders[name] = holder
                self._evict_beyond_limit()
            return holder

    def _evict_beyond_limit(self) -> None:
        while len(self._holders) > self.max_loaded:
            for name in self._holders:  # least recently used first
                if name != self.default_name:
                    self._holders.pop(name)
                    log.info("dropped model %s (MAX_LOADED_MODELS=%d)", name, self.max_loaded)
                    break
            else:
                return

    def preload(self) -> None:
        """Load models on the volume while there is room (worker start, and each poll)."""
        for name in self.registry.names():
            with self._lock:
                room = len(self._holders) < self.max_loaded
                held = name in self._holders
            if held:
                continue
            if not room:
                return
            try:
                self._holder(name)
            except NotFound:
                continue

    # --- following the pointers --------------------------------------------------------
    def refresh(self) -> None:
        """Refresh every held model; then fill free room with models new on the volume."""
        with self._lock:
            holders = list(self._holders.values())
        for holder in holders:
            try:
                holder.refresh()
            except Exception:  # noqa: BLE001 - one model's trouble must not stop the others
                log.exception("refreshing model %s failed", holder.name)
        try:
            self.preload()
        except Exception:  # noqa: BLE001
            log.exception("looking for new models failed")

    def start_polling(self) -> None:
        """Start the daemon thread that follows every held model's pointer (once per process)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll_forever, name="model-poll", daemon=True)
        self._thread.start()

    def _poll_forever(self) -> None:
        while True:
            time.sleep(self.poll_interval_s)
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the poller must never die
                log.exception("model poll failed")
