"""What named models cost one API worker: memory per loaded model, and the first request's load.

    .venv/bin/python -m bench.many_models [--model forest|tpot] [--repeats 9] [--mem-repeats 3]

Ten signed models on a temporary model volume as the trainer lays it out
(``<model_dir>/models/<name>/versions/<v>/{model.joblib,meta.json}`` + ``current.json``):
the default model (``iris``) and nine more, each a copy of one of ``bench/models.py``'s
artifacts (``forest``: StandardScaler + RandomForestClassifier(100) on iris, the default;
``tpot``: the trainer's own TPOT output, trained once and cached in ``bench/.work/tpot-store``,
about a minute the first time). Each copy is its own version, verified and unpickled on its
own, so ten copies cost what ten different models of that size cost.

1. **Memory**: in a fresh Python process each time, ``create_app(settings, poll=False)`` with
   ``MAX_LOADED_MODELS=16`` (so it preloads every model on the volume) over a volume of 1
   model and over one of 10. RSS (``VmRSS`` of ``/proc/self/status``, and psutil's USS) after
   the imports (tpot included, as the app imports it) and after ``create_app``; in separate
   processes, tracemalloc's view of what ``create_app`` allocated. The per-model figure is
   (10 models - 1 model) / 9, which leaves out the one-off imports the first model brings.
2. **First-request load**: ``POST /models/<name>/predict`` through ``app.test_client()``,
   cycling over the nine non-default models, for a model the worker does not hold (cold:
   verify, unpickle, smoke prediction, then the prediction) and the same request right
   after (the repeat). With ``MAX_LOADED_MODELS=1`` only the default model stays: a named
   model is dropped as soon as its request has it, so the repeat loads again too. With
   ``MAX_LOADED_MODELS=2`` the repeat is served from memory, and asking for the next model
   drops the previous one, so every cold request really loads. Each limit runs in a fresh
   process; the default model's own requests are the reference.

Prints markdown tables (medians); ``--json`` also writes the figures. Nothing is asserted.
Takes about a minute with the forest model.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .models import BOOK_ROW, REPO, BenchModel, build

WORK = Path(__file__).resolve().parent / ".work"
SIGNING_KEY = "bench-many-models-signing-key"
DEFAULT_NAME = "iris"
MODEL_COUNT = 10
RESULT_MARK = "MANY_MODELS_JSON "


# --- the volume ------------------------------------------------------------------------
def other_names(count: int) -> list[str]:
    return [f"model-{i:02d}" for i in range(1, count)]


def write_volume(model_dir: Path, names: list[str], artifact: Path, meta: dict[str, Any]) -> None:
    """One signed version per name, made current, as the trainer publishes one."""
    from tpotserve.registry import ModelRegistry
    from tpotserve.store import new_version_id

    registry = ModelRegistry(model_dir, SIGNING_KEY.encode(), DEFAULT_NAME)
    for name in names:
        store = registry.store(name)
        version = new_version_id()
        store.write_version(version, lambda path: shutil.copyfile(artifact, path), dict(meta))
        store.set_current(version)


def artifact_sizes(model_dir: Path) -> dict[str, Any]:
    artifacts = sorted((model_dir / "models").glob("*/versions/*/model.joblib"))
    metas = sorted((model_dir / "models").glob("*/versions/*/meta.json"))
    total = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    return {
        "models": len(artifacts),
        "model_joblib_bytes": [p.stat().st_size for p in artifacts],
        "meta_json_bytes": [p.stat().st_size for p in metas],
        "volume_bytes": total,
    }


def tpot_model(work: Path) -> BenchModel:
    """bench/models.py's TPOT model, read from its cache through the registry.

    The trainer now publishes under the default model's name (``tpot-store/models/iris``),
    where ``bench.models.tpot_model`` (which reads the store's root) does not look; the
    registry reads either layout. Trains once, as bench/models.py does, when nothing is cached.
    """
    from tpotserve.registry import ModelRegistry

    from . import models

    store_dir, key = work / "tpot-store", b"bench-tpot-store"
    store = ModelRegistry(store_dir, key, DEFAULT_NAME).store()
    pointer = store.read_pointer_quietly()
    if pointer is None:
        models._train_tpot(store_dir, key, work / "logs" / "tpot-train.log")
        store = ModelRegistry(store_dir, key, DEFAULT_NAME).store()
        pointer = store.read_pointer_quietly()
        if pointer is None:
            raise RuntimeError(f"the trainer published no model; see {work / 'logs' / 'tpot-train.log'}")
    meta = store.read_meta(pointer.version)
    directory = work / "models" / "tpot"
    directory.mkdir(parents=True, exist_ok=True)
    artifact = directory / "model.joblib"
    shutil.copyfile(store.verified_artifact(pointer.version, pointer.sha256), artifact)
    meta = {k: v for k, v in meta.items() if k not in ("sha256", "signature", "version")}
    pipeline = " ".join(str(meta.get("pipeline", "?")).split())
    return BenchModel("tpot", artifact, meta, f"TPOT (trainer, iris): {pipeline}")


# --- the children (each in a fresh interpreter) ----------------------------------------
def _settings(model_dir: Path, max_loaded: int) -> Any:
    from tpotserve.settings import load_settings

    return load_settings(
        model_dir=model_dir,
        dataset_dir=model_dir.parent / "datasets",
        model_signing_key=SIGNING_KEY,
        redis_url="redis://127.0.0.1:1/0",  # never contacted: no training here
        model_name=DEFAULT_NAME,
        max_loaded_models=max_loaded,
    )


def _import_like_a_worker() -> None:
    """What a worker has imported before its models load (the app module, tpot)."""
    import tpotserve_api.app  # noqa: F401
    from tpotserve.offline import disable_tpot_update_check

    disable_tpot_update_check()
    try:
        import tpot  # noqa: F401
    except ImportError:
        pass


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _uss_kib() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_full_info().uss // 1024


def child_memory(model_dir: Path, use_tracemalloc: bool) -> dict[str, Any]:
    import gc

    _import_like_a_worker()
    from tpotserve_api.app import create_app

    gc.collect()
    result: dict[str, Any] = {"pid": os.getpid()}
    if use_tracemalloc:
        import tracemalloc

        tracemalloc.start()
        app = create_app(_settings(model_dir, 16), poll=False)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result.update(traced_kib=current // 1024, traced_peak_kib=peak // 1024)
    else:
        result.update(rss_base_kib=_rss_kib(), uss_base_kib=_uss_kib())
        app = create_app(_settings(model_dir, 16), poll=False)
        gc.collect()
        result.update(rss_kib=_rss_kib(), uss_kib=_uss_kib())
    result["loaded"] = sorted(app.extensions["tpotserve"].models.status())
    return result


def child_latency(model_dir: Path, max_loaded: int, names: list[str], repeats: int) -> dict[str, Any]:
    import logging

    _import_like_a_worker()
    from tpotserve_api.app import create_app

    app = create_app(_settings(model_dir, max_loaded), poll=False)
    logging.getLogger("tpotserve_api.access").setLevel(logging.WARNING)  # no line per request
    logging.getLogger("tpotserve_api").setLevel(logging.WARNING)
    pool = app.extensions["tpotserve"].models
    client = app.test_client()
    body = json.dumps(BOOK_ROW).encode()
    headers = {"Content-Type": "application/json"}

    def post_ms(path: str) -> float:
        started = time.perf_counter()
        response = client.post(path, data=body, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        answer = response.get_data(as_text=True)[:300]
        assert response.status_code == 200, (path, response.status_code, answer)
        return elapsed

    for _ in range(5):  # Flask's and the predict path's first-call costs, on the default model
        post_ms(f"/models/{DEFAULT_NAME}/predict")
    held_at_start = sorted(pool.status())
    # A model preloaded at start (room for it) goes last: asking for another drops it first.
    names = [n for n in names if n not in held_at_start] + [n for n in names if n in held_at_start]
    cold, again, default, held_before_repeat = [], [], [], []
    for i in range(repeats):
        name = names[i % len(names)]
        if name in pool.status():
            raise RuntimeError(f"{name} is held before its cold request (MAX_LOADED_MODELS={max_loaded})")
        cold.append(post_ms(f"/models/{name}/predict"))
        held_before_repeat.append(name in pool.status())
        again.append(post_ms(f"/models/{name}/predict"))
        default.append(post_ms(f"/models/{DEFAULT_NAME}/predict"))
    return {
        "pid": os.getpid(),
        "max_loaded_models": max_loaded,
        "held_at_start": held_at_start,
        "held_at_end": sorted(pool.status()),
        "repeat_found_model_held": sum(held_before_repeat),
        "cold_ms": cold,
        "repeat_ms": again,
        "default_ms": default,
    }


def _run_child(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.many_models", "--child", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise RuntimeError(f"child {args} printed no result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def child_main(argv: list[str]) -> int:
    kind, model_dir = argv[0], Path(argv[1])
    if kind == "rss":
        result = child_memory(model_dir, use_tracemalloc=False)
    elif kind == "tracemalloc":
        result = child_memory(model_dir, use_tracemalloc=True)
    elif kind == "latency":
        result = child_latency(model_dir, int(argv[2]), argv[3].split(","), int(argv[4]))
    else:
        raise SystemExit(f"unknown child {kind!r}")
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    return 0


# --- the parent ------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return statistics.median(values)


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m bench.many_models", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="forest", choices=["forest", "tpot"],
                        help="which bench/models.py artifact every model is a copy of")
    parser.add_argument("--repeats", type=int, default=9, help="cold/repeat request pairs per limit (>= 9)")
    parser.add_argument("--mem-repeats", type=int, default=3, help="fresh processes per memory figure")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.repeats < 9:
        parser.error("--repeats must be at least 9")

    started = time.monotonic()
    machine = _machine()
    if machine["loadavg_start"][0] > (machine["cpus"] or 1) / 2:
        print(f"warning: load average {machine['loadavg_start'][0]} on {machine['cpus']} CPUs: "
              "other work is running, timings are noisy", file=sys.stderr)
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="many-models-", dir=WORK))
    atexit.register(shutil.rmtree, tmp, True)
    bench_model = tpot_model(WORK) if args.model == "tpot" else build([args.model], WORK)[0]
    names = other_names(MODEL_COUNT)
    one_dir, ten_dir = tmp / "one" / "models", tmp / "ten" / "models"
    write_volume(one_dir, [DEFAULT_NAME], bench_model.artifact, bench_model.meta)
    write_volume(ten_dir, [DEFAULT_NAME, *names], bench_model.artifact, bench_model.meta)
    sizes = artifact_sizes(ten_dir)

    # 1. memory, alternating the volumes so slow drift hits both alike
    memory: dict[int, dict[str, list[dict[str, Any]]]] = {1: {"rss": [], "tracemalloc": []},
                                                          MODEL_COUNT: {"rss": [], "tracemalloc": []}}
    for _ in range(args.mem_repeats):
        for count, directory in ((1, one_dir), (MODEL_COUNT, ten_dir)):
            memory[count]["rss"].append(_run_child("rss", str(directory)))
    for count, directory in ((1, one_dir), (MODEL_COUNT, ten_dir)):
        memory[count]["tracemalloc"].append(_run_child("tracemalloc", str(directory)))
    for count in memory:
        for run in memory[count]["rss"] + memory[count]["tracemalloc"]:
            if len(run["loaded"]) != count:
                raise RuntimeError(f"expected {count} models loaded, the worker held {run['loaded']}")

    # 2. first-request load
    latency = {limit: _run_child("latency", str(ten_dir), str(limit), ",".join(names), str(args.repeats))
               for limit in (1, 2)}

    elapsed = time.monotonic() - started
    summary = _summarize(memory, latency, sizes)
    report = _render(args, bench_model, machine, sizes, summary, latency, elapsed)
    print(report)
    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "description": bench_model.description, "machine": machine,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()], "elapsed_s": round(elapsed, 1),
            "sizes": sizes, "summary": summary, "memory_runs": memory, "latency_runs": latency,
        }, indent=2) + "\n")
    return 0


def _summarize(memory: dict, latency: dict, sizes: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"memory": {}, "latency": {}}
    for count, runs in memory.items():
        rss = runs["rss"]
        uss = [r["uss_kib"] for r in rss if r["uss_kib"] is not None]
        out["memory"][count] = {
            "rss_base_kib": _median([r["rss_base_kib"] for r in rss]),
            "rss_kib": _median([r["rss_kib"] for r in rss]),
            "rss_added_kib": _median([r["rss_kib"] - r["rss_base_kib"] for r in rss]),
            "uss_kib": _median(uss) if uss else None,
            "traced_kib": _median([r["traced_kib"] for r in runs["tracemalloc"]]),
            "traced_peak_kib": _median([r["traced_peak_kib"] for r in runs["tracemalloc"]]),
        }
    one, ten = out["memory"][1], out["memory"][MODEL_COUNT]
    per = MODEL_COUNT - 1
    out["per_model_kib"] = {
        "rss": (ten["rss_kib"] - one["rss_kib"]) / per,
        "rss_added": (ten["rss_added_kib"] - one["rss_added_kib"]) / per,
        "uss": (ten["uss_kib"] - one["uss_kib"]) / per if ten["uss_kib"] is not None else None,
        "traced": (ten["traced_kib"] - one["traced_kib"]) / per,
    }
    for limit, run in latency.items():
        out["latency"][limit] = {
            "cold_ms": _median(run["cold_ms"]),
            "repeat_ms": _median(run["repeat_ms"]),
            "default_ms": _median(run["default_ms"]),
            "n": len(run["cold_ms"]),
            "repeat_found_model_held": run["repeat_found_model_held"],
        }
    return out


def _render(args, bench_model, machine, sizes, summary, latency, elapsed) -> str:  # noqa: ANN001
    mem, per = summary["memory"], summary["per_model_kib"]
    joblib_sizes = sizes["model_joblib_bytes"]
    lines = [
        f"## Many models: {args.model} ({bench_model.description})",
        "",
        f"{machine['cpus']} CPUs, load average {machine['loadavg_start']} at the start, "
        f"{tuple(round(x, 2) for x in os.getloadavg())} at the end; {elapsed:.0f} s.",
        "",
        f"On disk: model.joblib {joblib_sizes[0] / 1024:.1f} KiB each "
        f"(meta.json {sizes['meta_json_bytes'][0]} B); {sizes['models']} models, "
        f"volume {sizes['volume_bytes'] / 1024:.1f} KiB in all.",
        "",
        f"### One API worker after create_app (MAX_LOADED_MODELS=16, preloads all), "
        f"medians of {args.mem_repeats} fresh processes (tracemalloc: 1)",
        "",
        "| models loaded | RSS after imports | RSS after create_app | added by create_app | USS "
        "| tracemalloc (create_app) | tracemalloc peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for count in (1, MODEL_COUNT):
        m = mem[count]
        uss = f"{_mib(m['uss_kib'])} MiB" if m["uss_kib"] is not None else "-"
        lines.append(
            f"| {count} | {_mib(m['rss_base_kib'])} MiB | {_mib(m['rss_kib'])} MiB "
            f"| {_mib(m['rss_added_kib'])} MiB "
            f"| {uss} | {_mib(m['traced_kib'])} MiB | {_mib(m['traced_peak_kib'])} MiB |"
        )
    uss_per = f"{per['uss']:.0f} KiB" if per["uss"] is not None else "-"
    lines += [
        f"| per extra model ((10 - 1) / 9) | | {per['rss']:.0f} KiB | {per['rss_added']:.0f} KiB "
        f"| {uss_per} | {per['traced']:.0f} KiB | |",
        "",
        f"### POST /models/<name>/predict (one row, test client), medians of {args.repeats}, "
        "cycling over 9 models",
        "",
        "| MAX_LOADED_MODELS | cold (load + predict) | same request again "
        "| repeat found the model held | default model (held) |",
        "|---|---|---|---|---|",
    ]
    for limit, s in summary["latency"].items():
        lines.append(
            f"| {limit} | {s['cold_ms']:.1f} ms | {s['repeat_ms']:.1f} ms "
            f"| {s['repeat_found_model_held']}/{s['n']} | {s['default_ms']:.2f} ms |"
        )
    lines += [
        "",
        "MAX_LOADED_MODELS counts the default model, which always stays: with 1, a named model is "
        "dropped right after its load, so every request for it loads it again.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
