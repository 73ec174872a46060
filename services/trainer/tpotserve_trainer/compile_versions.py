"""``tpotserve compile``: give stored versions published before compiled inference a compiled form.

    python -m tpotserve_trainer.compile_versions [--model NAME] [--version ID] [--dry-run]

Run where the trainer runs (it needs skl2onnx and the model volume read-write): natively
``tpotserve compile``, in compose ``docker compose exec worker python -m
tpotserve_trainer.compile_versions``. For each version without a compiled record it verifies the
artifact (sha256 and signature, as the API does) before unpickling it, compiles it as a training
would (``compiler.compile_pipeline``) and writes model.onnx and compiled.json beside it
(``ModelStore.add_compiled``). The version's meta.json and model.joblib are not touched: its
sha256, its signature and current.json stay what they were; compiled.json names the artifact
sha256 it was compiled from and carries model.onnx's own sha256 and signature. A version that
cannot be compiled gets a compiled.json with the reason, so it is not tried again. API workers
pick the compiled form up the next time they load the version (a restart, or the next version).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import joblib

from tpotserve.errors import TpotServeError
from tpotserve.model_meta import ModelMeta
from tpotserve.offline import disable_tpot_update_check
from tpotserve.registry import ModelRegistry
from tpotserve.settings import load_settings

from . import compiler


def compile_store(registry: ModelRegistry, model: str | None = None, version: str | None = None,
                  dry_run: bool = False) -> list[dict[str, Any]]:
    """Compile every version (of ``model``, or every model; only ``version`` if given) that has no
    compiled record; one line of outcome per version looked at."""
    outcomes = []
    names = [model] if model else registry.names()
    for name in names:
        store = registry.existing_store(name)
        for vid in [version] if version else store.list_version_ids():
            outcomes.append({"model": name, "version": vid, **_compile_one(store, vid, dry_run)})
    return outcomes


def _compile_one(store: Any, version: str, dry_run: bool) -> dict[str, Any]:
    try:
        if store.compiled_record(version) is not None:
            return {"outcome": "already compiled (or its reason recorded)"}
        raw_meta = store.read_meta(version)
        meta = ModelMeta.from_json(raw_meta, version)
        if dry_run:
            return {"outcome": "would compile"}
        path = store.verified_artifact(version, raw_meta["sha256"])  # before unpickling, always
        started = time.monotonic()
        raw, record = compiler.compile_pipeline(joblib.load(path), meta)
        record["compile_seconds"] = round(time.monotonic() - started, 1)
        with store.publishing():
            if store.compiled_record(version) is not None:
                return {"outcome": "compiled meanwhile by another run"}
            store.add_compiled(version, raw, record)
    except TpotServeError as exc:
        return {"outcome": "skipped", "reason": exc.message}
    if raw is None:
        return {"outcome": "not compilable", "reason": record["reason"]}
    return {"outcome": "compiled", "precision": record["precision"], "max_difference": record["max_difference"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tpotserve compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="only this named model (default: every model on the volume)")
    parser.add_argument("--version", help="only this version (with --model, or of the default model)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be compiled, write nothing")
    args = parser.parse_args(argv)
    disable_tpot_update_check()  # before unpickling (and the converters) import tpot
    settings = load_settings()
    registry = ModelRegistry.from_settings(settings)
    model = args.model or (settings.model_name if args.version else None)
    try:
        outcomes = compile_store(registry, model, args.version, args.dry_run)
    except TpotServeError as exc:
        print(f"tpotserve compile: error: {exc.message}", file=sys.stderr)
        return 1
    for outcome in outcomes:
        print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
