"""Instructions per one-row request, counted by valgrind's callgrind: a figure the machine's noise
cannot move. On the 2-core VM here, req/s and CPU seconds per request drift 15-30 % between runs a
minute apart (steal from neighbours), more than the few percent these comparisons are about;
callgrind counts the same instructions for the same code and inputs whatever else runs.

    .venv/bin/python -m bench.instructions monitoring            # MONITORING on vs off (~10 min)
    .venv/bin/python -m bench.instructions checkout ../other      # this checkout vs another (~10 min)
    .venv/bin/python -m bench.instructions checkout ../a --this ../b   # two other checkouts

In process: the API's ``create_app`` with Flask's test client, one-row ``POST /predict`` (the
book's row) against the bench forest, its version with a drift profile (so "on" bins every row
and keeps every answer), and a real Redis (the monitor's flush thread writes to it; callgrind
counts every thread). Each case runs twice, with N1 and N2 requests: (instructions(N2) -
instructions(N1)) / (N2 - N1) is the cost of one request, start-up, imports and the model load
cancelling out (PYTHONHASHSEED is fixed so both runs start alike). Flushes go by rows
(MONITORING_FLUSH_ROWS, 1,000), as under load, not by the 2 s timer, which under valgrind's
slowdown would flush every few dozen rows.

Left out, the same on both sides: Gunicorn's HTTP parsing and nginx. The ratio here is
therefore an upper bound of the API's share of the whole stack's: the same extra instructions
over more. Redis runs outside valgrind; in ``monitoring`` its own time for every command it
answered (INFO commandstats) is reported per request of the "on" runs, the only ones that write.
``checkout`` runs the other tree's packages (first on PYTHONPATH) against the same store and
model, with monitoring off (a checkout from before monitoring has none).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from native.stack import free_port, require_binary

from .micro import WORK
from .models import FEATURES, REPO, build
from .run import RESULTS

SIGNING_KEY = "bench-instructions-key"
BOOK_ROW = dict(zip(FEATURES, (5.1, 3.5, 1.4, 0.2)))
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


# --- the process callgrind watches ---------------------------------------------------
def worker(requests: int) -> None:
    """``requests`` one-row predictions through the app of whichever checkout is first on the path."""
    import logging

    from tpotserve.settings import load_settings
    from tpotserve_api.app import create_app

    app = create_app(load_settings(), poll=False)
    logging.getLogger("tpotserve_api.access").setLevel(logging.WARNING)  # no log line per call
    client = app.test_client()
    body = json.dumps(BOOK_ROW).encode()
    for _ in range(requests):
        response = client.post("/predict", data=body, headers={"Content-Type": "application/json"})
        if response.status_code != 200:
            raise SystemExit(f"/predict answered {response.status_code}: {response.get_data(as_text=True)[:300]}")
    monitor = getattr(app.extensions["tpotserve"], "monitor", None)
    if monitor is not None and not monitor.flush():
        raise SystemExit("the monitor could not write to Redis")
    sys.stdout.flush()
    os._exit(0)  # the flush thread is a daemon: no interpreter teardown in the count


# --- the driver ------------------------------------------------------------------------
def count(checkout: Path, env: dict[str, str], requests: int, out_dir: Path) -> int:
    """Instructions callgrind counted for one worker run of ``requests`` requests."""
    paths = [checkout / "shared", checkout / "services" / "api", checkout / "services" / "trainer", REPO]
    run_env = {**os.environ, **env, "PYTHONHASHSEED": "0", "PYTHONPATH": os.pathsep.join(map(str, paths))}
    out = out_dir / f"callgrind-{abs(hash((str(checkout), tuple(sorted(env.items())), requests)))}.out"
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", "bench.instructions",
         "--worker", str(requests)],
        env=run_env, cwd=REPO, capture_output=True, text=True, timeout=3600,
    )
    found = _COLLECTED.findall(done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"callgrind run failed ({done.returncode}): {done.stderr[-2000:]}")
    out.unlink(missing_ok=True)
    return int(found[-1])


def per_request(cases: dict[str, tuple[Path, dict[str, str]]], n1: int, n2: int, out_dir: Path
                ) -> dict[str, dict[str, Any]]:
    """Every case at N1 and N2 requests, two callgrind runs at a time (one per core)."""
    jobs = [(name, n) for name in cases for n in (n1, n2)]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        totals = dict(zip(jobs, pool.map(lambda job: count(*cases[job[0]], job[1], out_dir), jobs)))
    return {name: {"instructions_n1": totals[(name, n1)], "instructions_n2": totals[(name, n2)],
                   "per_request": round((totals[(name, n2)] - totals[(name, n1)]) / (n2 - n1))}
            for name in cases}


def _redis_us_per_request(port: int, requests: int) -> float:
    """Redis's own time (INFO commandstats, outside valgrind) for every command, per request of the
    runs that wrote ("off" writes nothing): what the instruction count of the API leaves out."""
    import redis

    stats = redis.Redis(port=port).info("commandstats")
    return round(sum(entry["usec"] for entry in stats.values()) / requests, 2)


def _publish(model_dir: Path, profile: bool) -> None:
    """The bench forest as the default model's current version (with a drift profile, or not)."""
    from tpotserve.registry import ModelRegistry

    from .micro import publish
    from .monitoring import _publish_with_profile

    (model,) = build(["forest"], WORK)
    store = ModelRegistry(model_dir, SIGNING_KEY.encode(), "iris").store()
    (_publish_with_profile if profile else publish)(store, model)


def _commit(tree: Path) -> str | None:
    """The commit a checkout is at (with "+changes" when its tracked files differ), or None."""
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(tree), "diff", "--quiet", "HEAD"]).returncode != 0
    return head.stdout.strip() + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(int(argv[1]))
    common = argparse.ArgumentParser(add_help=False)  # options after the subcommand, as users type them
    common.add_argument("--n1", type=int, default=200)
    common.add_argument("--n2", type=int, default=1200)
    common.add_argument("--results-dir", type=Path, default=RESULTS)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("monitoring", parents=[common], help="MONITORING on vs off, this checkout")
    other = sub.add_parser("checkout", parents=[common], help="this checkout vs another, monitoring off")
    other.add_argument("other", type=Path)
    other.add_argument("--this", type=Path, default=REPO, dest="this",
                       help="the checkout to compare (default: this one), e.g. a worktree of a later commit")
    args = parser.parse_args(argv)
    require_binary("valgrind")
    require_binary("redis-server")
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="instructions-", dir=WORK))
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        _publish(tmp / "models", profile=args.what == "monitoring")
        base = {"MODEL_DIR": str(tmp / "models"), "DATASET_DIR": str(tmp / "datasets"),
                "MODEL_SIGNING_KEY": SIGNING_KEY, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                "MONITORING_FLUSH_S": "86400", "MONITORING_FLUSH_ROWS": "1000", "LOG_LEVEL": "warning"}
        if args.what == "monitoring":
            cases = {"on": (REPO, {**base, "MONITORING": "true"}), "off": (REPO, {**base, "MONITORING": "false"})}
            labels = ("on", "off")
        else:
            cases = {"this": (args.this.resolve(), {**base, "MONITORING": "false"}),
                     "other": (args.other.resolve(), {**base, "MONITORING": "false"})}
            labels = ("this", "other")
        figures = per_request(cases, args.n1, args.n2, tmp)
        redis_us = _redis_us_per_request(port, args.n1 + args.n2) if args.what == "monitoring" else None
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    a, b = (figures[label]["per_request"] for label in labels)
    result = {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "what": args.what,
              "this": str(getattr(args, "this", REPO)), "this_commit": _commit(getattr(args, "this", REPO)),
              "other": str(args.other) if args.what == "checkout" else None,
              "other_commit": _commit(args.other) if args.what == "checkout" else None, "n1": args.n1, "n2": args.n2,
              "cases": figures, "ratio": round(a / b, 4), "difference_per_request": a - b,
              "redis_us_per_request_on": redis_us}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = args.what if args.what == "monitoring" else f"checkout-{result['this_commit']}-vs-{result['other_commit']}"
    out = args.results_dir / f"instructions-{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| one-row POST /predict, in process | {labels[0]} | {labels[1]} | {labels[0]} / {labels[1]} |")
    print("|---|---:|---:|---:|")
    print(f"| instructions per request | {a:,} | {b:,} | {a / b:.4f} |")
    print(f"\n{labels[0]} - {labels[1]}: {a - b:,} instructions per request; results in {out}")
    if redis_us is not None:
        print(f"Redis's own CPU for what 'on' wrote (INFO commandstats): {redis_us} us per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
