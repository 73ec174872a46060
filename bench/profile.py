"""Where an API worker's time goes: py-spy on every Gunicorn worker during one run.

``python -m bench.run --profile`` runs, after the measured rounds, one extra product
run (c=16 one-row, and 10,000-row batches) with ``py-spy record --gil --format raw``
attached to each API worker, then sorts the sampled stacks into the steps of a
request (:data:`CATEGORIES`) and reports each step's share, and that share of the
workers' measured CPU per request (from /proc) as an estimate in milliseconds. The
collapsed stacks stay under the work directory for flame-graph tools.

``--gil``: only samples of the thread holding the GIL, i.e. running Python. py-spy's
idle detection is not reliable for a worker blocked in a pipe or socket write (it
counts those as busy), so without it waits look like work. The price: time spent
with the GIL released (the kernel's socket work, the trees' nogil loops) is not
sampled; the CPU per process from /proc covers it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from native.stack import descendants

# (category, markers): a sample belongs to the first category any of whose markers
# appears in its stack (``function (file``); order matters: specific before general.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("model: transforms (e.g. StandardScaler)", (".transform (", "elementwise_transform.<locals>")),
    (
        "model: trees / predict_proba",
        (
            "trees_proba (tpotserve_api/fast_path",
            "checked_once (tpotserve_api/",
            "LoadedModel.predict_proba (tpotserve_api/",
        ),
    ),
    ("answer: labels and probability dicts", ("LoadedModel.predict (tpotserve_api/",)),
    ("request: JSON parse", ("parse_json (tpotserve/",)),
    ("request: validation (parse_predict)", ("parse_predict (tpotserve_api/",)),
    ("request: range warnings", ("range_warnings (tpotserve_api/",)),
    ("response: JSON encode (orjson)", ("json_answer (tpotserve_api/",)),
    ("request: body read", ("_json_body (tpotserve_api/",)),
    ("metrics (prometheus-client)", ("tpotserve_api/metrics.py", "prometheus_client/")),
    ("access log line", ("_log (tpotserve_api/app.py", "logging/__init__.py")),
    ("Flask / Werkzeug / Flask-RESTful", ("(flask/", "(werkzeug/", "(flask_restful/")),
    ("Gunicorn: socket write and close", ("close_graceful (gunicorn/", "write (gunicorn/util.py")),
    ("Gunicorn: accept, parse", ("(gunicorn/",)),
    ("model poll thread", ("_poll_forever (tpotserve_api/",)),
]
OTHER = "other (interpreter, imports, GC)"
RATE = 200
"""py-spy samples per second and worker."""


def py_spy() -> str | None:
    found = shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy")
    return str(found) if found and Path(found).exists() else None


def worker_pids(server: Any) -> list[int]:
    """The Gunicorn workers: the API master's children."""
    master = server.stack.processes["api"].popen.pid
    return sorted(descendants(master))


def profile_run(
    server: Any, out_dir: Path, run: Callable[[], dict[str, Any]], duration_s: int
) -> dict[str, Any]:
    """Run ``run()`` with py-spy on every API worker; the categorized report."""
    binary = py_spy()
    if binary is None:
        return {"error": "py-spy is not installed (pip install -r requirements-dev.lock)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    for pid in worker_pids(server):
        path = out_dir / f"worker-{pid}.txt"
        argv = [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(duration_s + 1),
            "--rate",
            str(RATE),
            "--format",
            "raw",
            "--gil",
            "--nonblocking",
            "--output",
            str(path),
        ]
        spies.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), path))
    time.sleep(0.5)  # py-spy attaches before the load starts
    result = run()
    errors = []
    for proc, _ in spies:
        try:
            _, err = proc.communicate(timeout=duration_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode != 0:
            errors.append(err.decode(errors="replace")[-500:])
    samples = {}
    for _, path in spies:
        if path.exists():
            for stack, count in read_collapsed(path):
                samples[stack] = samples.get(stack, 0) + count
    if not samples:
        return {"error": f"py-spy recorded nothing: {errors}", "run": result}
    worker_ms = result.get("cpu_ms_per_req_by_process", {}).get("gunicorn")
    answered = max(result["requests"], 1)
    # Each sample stands for 1/RATE s of one worker holding the GIL (running Python).
    gil_ms = sum(samples.values()) / RATE * 1000 / answered
    categories = categorize(samples, gil_ms)
    if worker_ms is not None:
        categories.append(
            {
                "category": "GIL released: C code (tree walks, numpy), kernel socket I/O",
                "share": None,
                "ms_per_req": round(max(worker_ms - gil_ms, 0.0), 4),
            }
        )
    return {
        "run": result,
        "stacks_dir": str(out_dir),
        "worker_cpu_ms_per_req": worker_ms,
        "gil_ms_per_req": round(gil_ms, 4),
        "categories": categories,
    }


def read_collapsed(path: Path) -> list[tuple[str, int]]:
    """``frame;frame;... count`` lines (py-spy --format raw)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack, int(count)))
    return out


def category_of(stack: str) -> str:
    for name, markers in CATEGORIES:
        if any(marker in stack for marker in markers):
            return name
    return OTHER


def categorize(samples: dict[str, int], gil_ms_per_req: float | None) -> list[dict[str, Any]]:
    """Each step's share of the samples and, given the GIL-holding ms per request, its ms."""
    total = sum(samples.values())
    shares: dict[str, int] = {}
    for stack, count in samples.items():
        name = category_of(stack)
        shares[name] = shares.get(name, 0) + count
    rows = []
    for name, count in sorted(shares.items(), key=lambda kv: -kv[1]):
        share = count / total
        rows.append(
            {
                "category": name,
                "share": round(share, 4),
                "ms_per_req": round(share * gil_ms_per_req, 4) if gil_ms_per_req else None,
            }
        )
    return rows


def profile_markdown(profiles: list[dict[str, Any]]) -> list[str]:
    lines = ["## Where an API worker's CPU goes (py-spy, one extra run each)", ""]
    for report in profiles:
        lines.append(f"### {report.get('model')}: {report.get('scenario')}")
        lines.append("")
        if report.get("error"):
            lines += [f"not profiled: {report['error']}", ""]
            continue
        run = report["run"]
        lines += [
            f"{run['req_s']:.0f} req/s while profiled. CPU per request (/proc): Gunicorn workers "
            f"{report['worker_cpu_ms_per_req']} ms, of which {report['gil_ms_per_req']} ms running Python "
            f"(py-spy --gil samples); nginx {run['cpu_ms_per_req_by_process'].get('nginx')} ms. "
            f"Stacks: {report['stacks_dir']}",
            "",
            "| step | share of Python samples | ~ms per request |",
            "|---|---:|---:|",
        ]
        for row in report["categories"]:
            ms = "-" if row["ms_per_req"] is None else f"{row['ms_per_req']:.3f}"
            share = "-" if row["share"] is None else f"{row['share'] * 100:.1f}%"
            lines.append(f"| {row['category']} | {share} | {ms} |")
        lines.append("")
    return lines
