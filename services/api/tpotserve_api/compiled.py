"""The compiled engine: a version's stored ONNX graph in ONNX Runtime, verified at load.

Nothing is converted or unpickled here at request time: the trainer compiled the pipeline at
publish time (``tpotserve_trainer.compiler``), the store hands over the graph's bytes once their
sha256 and signature check out, and ONNX Runtime parses them (protobuf, not pickle). The graph is
used only if it reproduces the scikit-learn pipeline on the verification rows
(``tpotserve.compiled``: identical labels, probabilities within PROBA_ATOL); otherwise the
version is served as before and the reason is in its ``serving`` metadata and in
``tpotserve_compiled_fallbacks``.

Which engine answers a request is decided at load, per request size, by timing both engines
on this model (docs/performance.md#compiled-inference): the compiled one up to
``max_rows`` rows, the pipeline's own path (with the fast path where it applies) beyond.
Labels always come from the same place (the argmax over ``meta.classes``-ordered columns, or
``classes_`` for a model without probabilities), so an answer has the same shape, the same
labels and, within the tolerance, the same probabilities whichever engine ran.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tpotserve.compiled import Verdict, check_outputs, verification_rows
from tpotserve.model_meta import ModelMeta

from .limits import MAX_MAGNITUDE

log = logging.getLogger(__name__)

TIMING_SIZES = (1, 1000, 10_000)
"""Request sizes timed at load for the engine choice (rows)."""
TIMING_REPEATS = 5
WIN_MARGIN = 0.9
"""The compiled engine takes a size only if it is at least 10% faster there."""


@dataclass
class CompiledEngine:
    """An ONNX Runtime session that reproduced the pipeline, and the sizes it answers."""

    session: Any = field(repr=False)
    input_name: str
    dtype: Any
    outputs: dict[str, str | None]
    precision: str
    max_rows: int = 0
    """Requests of up to this many rows use the compiled engine (0: none)."""
    timings: dict[str, Any] = field(default_factory=dict)

    def run(self, X: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for ``X``: [label] + [probabilities], or [value]."""
        names = [name for name in self.outputs.values() if name]
        return self.session.run(names, {self.input_name: X.astype(self.dtype, copy=False)})


def new_session(raw: bytes) -> Any:
    """An ONNX Runtime session for one worker: one thread (each Gunicorn worker owns a core's
    worth of work, as the fast path's ``pin_single_thread`` says), no spinning threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(raw, options, providers=["CPUExecutionProvider"])


def load_engine(raw: bytes, record: dict[str, Any], model: Any, meta: ModelMeta,
                sklearn_path: Callable[[np.ndarray], Any]) -> tuple[CompiledEngine | None, dict[str, Any]]:
    """The verified engine and what to say about it (``serving`` in GET /models/<name>); None
    and the reason when the graph cannot be loaded, does not match, or is never faster."""
    outputs = record.get("outputs") or {}
    try:
        session = new_session(raw)
        input_name = session.get_inputs()[0].name
        dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32
        engine = CompiledEngine(session, input_name, dtype, outputs, str(record.get("precision")))
        rows = verification_rows(meta, model)
        verdict = verify(engine, model, meta, rows)
    except Exception as exc:  # noqa: BLE001 - no compiled engine is better than a wrong one
        return None, {"engine": "scikit-learn", "fallback": "load_failed",
                      "reason": f"the compiled form could not be loaded: {type(exc).__name__}: {exc}"[:500]}
    if not verdict.ok:
        return None, {"engine": "scikit-learn", "fallback": "verification_failed",
                      "reason": f"the compiled form does not reproduce the pipeline on {verdict.rows} "
                                f"verification rows: {verdict.reason}"}
    engine.max_rows, engine.timings = choose_sizes(engine, sklearn_path, rows)
    info = {"engine": "onnxruntime" if engine.max_rows else "scikit-learn",
            "compiled": {"precision": engine.precision, "verified_rows": verdict.rows,
                         "max_difference": verdict.max_difference, "max_rows": engine.max_rows,
                         "timings_us": engine.timings}}
    if not engine.max_rows:
        return None, {**info, "fallback": "slower",
                      "reason": "the compiled form was slower than the pipeline at every size timed"}
    return engine, info


def verify(engine: CompiledEngine, model: Any, meta: ModelMeta, rows: np.ndarray) -> Verdict:
    """Compare the engine with the pipeline itself (scikit-learn's own calls) on ``rows``."""
    return check_outputs(meta, model, rows, engine.run(rows))


def choose_sizes(engine: CompiledEngine, sklearn_path: Callable[[np.ndarray], Any],
                 rows: np.ndarray) -> tuple[int, dict[str, Any]]:
    """Up to how many rows the compiled engine is the faster, by timing both on this model.

    Each engine answers requests of 1, 1,000 and 10,000 rows (the verification rows,
    repeated), interleaved (5 times, 3 at 10,000 rows), the fastest of each; a larger size is
    timed only while the compiled engine is still the faster by WIN_MARGIN. The compiled engine
    takes every size below the first crossing, interpolated linearly between the two sizes
    around it: none when it is not 10% faster at one row, all when it is at every size timed. (Two sizes are not enough: an
    MLP's float64 MatMul in ONNX Runtime beat NumPy's at 1,000 rows and lost at 10,000.)
    """
    timings: dict[str, Any] = {}
    previous: tuple[int, float, float] | None = None
    for size in TIMING_SIZES:
        X = np.resize(rows, (size, rows.shape[1]))
        compiled, pipeline = [], []
        for _ in range(TIMING_REPEATS if size < 10_000 else 3):
            compiled.append(_seconds(lambda: engine.run(X)))
            pipeline.append(_seconds(lambda: sklearn_path(X)))
        # The fastest of the repeats: what the engine costs, least disturbed by the other
        # processes on the machine (two workers load at once, and may decide differently on
        # noise: the margin below keeps a close call on the pipeline's side).
        c, p = float(np.min(compiled)) * 1e6, float(np.min(pipeline)) * 1e6
        timings[str(size)] = {"onnxruntime": round(c, 1), "scikit-learn": round(p, 1)}
        if c > WIN_MARGIN * p:
            if previous is None:
                return 0, timings
            n0, c0, p0 = previous
            # Where (margin x p - c), positive at n0 and not at size, reaches zero on that segment.
            d0, d1 = WIN_MARGIN * p0 - c0, WIN_MARGIN * p - c
            crossing = n0 + d0 * (size - n0) / max(d0 - d1, 1e-9)
            return max(n0, int(crossing)), timings
        previous = (size, c, p)
    return 1 << 30, timings


def within_float32(X: np.ndarray) -> bool:
    """The compiled engine's input domain, the fast path's: finite values below float32's largest
    (beyond it a tree's float32 cast overflows; scikit-learn's own checks answer instead)."""
    return bool(X.size) and float(np.abs(X).max()) < MAX_MAGNITUDE


def _seconds(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started
