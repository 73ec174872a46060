"""The benchmark: tpotserve against the book's Flask app and MLServer, side by side.

    make bench                               # the full run (about 20 minutes)
    python -m bench.run --smoke              # a few seconds: one model, no MLServer (make test runs it)
    python -m bench.run --models forest --repeats 5 --duration 15 --concurrency 1 16 64

For each model (``forest``: StandardScaler + RandomForestClassifier(100) on iris;
``tpot``: a pipeline the project's trainer produced) it starts, on free loopback
ports and serving the same joblib file:

  (a) product   the native stack (native.stack.NativeStack): nginx -> Gunicorn -> Flask API
  (b) book      bench/book_app.py: one Flask-RESTful app on the Flask development server,
                a one-row DataFrame and predict + predict_proba per request, as the book does
  (c) mlserver  Seldon MLServer 1.7.1 with its scikit-learn runtime (own venv; skipped with
                a printed reason when it cannot be installed)

then drives each with wrk (bench/wrk/post.lua) at each concurrency with one-row
requests, and with 1,000- and 10,000-row batches; runs alternate between the
servers (the order rotates each round) and every run is repeated. It reports
req/s, p50/p99, errors, server CPU per request (from /proc/<pid>/stat of each
server's process tree), and the ratios to (b) and (c) from the same run, and
writes bench/results/<time>-<label>.json and .md. Details: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from native import proc
from tpotserve.clock import utc_iso

from .models import FEATURES, BenchModel, build
from .micro import batch_rows, median_us
from .servers import BookServer, MLServer, ProductServer, ProductV2Server, Server, ServerUnavailable

BENCH = Path(__file__).resolve().parent
WORK = BENCH / ".work"
RESULTS = BENCH / "results"
LUA = BENCH / "wrk" / "post.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_ORDER = ("product", "v2", "book", "mlserver")

# Targets, as ratios from the same run (the acceptance numbers).
TARGET_MODEL = "forest"
TARGET_CONCURRENCY = 16
TARGET_VS_BOOK = 6.0
TARGET_VS_MLSERVER = 4.0
TARGET_P99_OVER_P50 = 2.0
TARGET_BATCH_ROWS = 10_000
TARGET_BATCH_SHARE = 0.5


# --- what to run -------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int
    connections: int

    @property
    def is_batch(self) -> bool:
        return self.rows > 1


def scenarios(concurrency: list[int], batch_sizes: list[int], batch_concurrency: int) -> list[Scenario]:
    one_row = [Scenario(f"1 row, c={c}", 1, c) for c in concurrency]
    batches = [Scenario(f"{n} rows, c={batch_concurrency}", n, batch_concurrency) for n in batch_sizes]
    return one_row + batches


# --- measuring -----------------------------------------------------------------------
def cpu_ticks(pids: set[int]) -> dict[int, tuple[str, int]]:
    """Name and utime + stime (clock ticks) of each live process, from /proc/<pid>/stat."""
    ticks = {}
    for pid in pids:
        entry = proc.read(pid)
        if entry is not None:
            ticks[pid] = (entry.name, entry.cpu_ticks)
    return ticks


def cpu_seconds_between(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]
) -> tuple[float, dict[str, float]]:
    """CPU the processes used between two snapshots, in all and by process name
    (a process new in ``after`` counts whole; one gone by then is not counted)."""
    by_name: dict[str, float] = {}
    for pid, (name, ticks) in after.items():
        used = ticks - before.get(pid, (name, 0))[1]
        by_name[name] = by_name.get(name, 0.0) + max(used, 0) / CLK_TCK
    return sum(by_name.values()), by_name


def rss_mb(pids: set[int]) -> float:
    """Resident memory of the processes, in MiB (VmRSS from /proc/<pid>/status)."""
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return round(total_kb / 1024, 1)


def wrk_binary() -> str:
    """wrk's path; installed from Debian when missing and we are root (as scripts/setup.sh does)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing Debian's wrk (apt-get install -y wrk)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, stdout=subprocess.DEVNULL)
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    return found


def parse_wrk(stdout: str) -> dict[str, Any]:
    """The WRK_JSON line bench/wrk/post.lua prints."""
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON ") :])
    raise RuntimeError(f"wrk printed no summary:\n{stdout[-2000:]}")


def run_wrk(
    wrk: str, url: str, body: Path, connections: int, duration_s: int, timeout_s: int = 60
) -> dict[str, Any]:
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(LUA),
        url,
        "--",
        str(body),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse_wrk(done.stdout)


def measure(wrk: str, server: Server, body: Path, scenario: Scenario, duration_s: int) -> dict[str, Any]:
    """One wrk run against one server, with the server's CPU over the run."""
    pids = server.pids()
    before = cpu_ticks(pids)
    load_before = os.getloadavg()[0]
    out = run_wrk(wrk, server.url, body, scenario.connections, duration_s)
    after = cpu_ticks(pids | server.pids())
    seconds = out["duration_us"] / 1e6
    errors = sum(
        out[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    ok = max(out["requests"] - out["status_errors"], 0)
    cpu_s, cpu_by_name = cpu_seconds_between(before, after)
    return {
        "requests": out["requests"],
        "duration_s": round(seconds, 3),
        "req_s": round(ok / seconds, 1) if seconds else 0.0,
        "rows_s": round(ok * scenario.rows / seconds, 1) if seconds else 0.0,
        "p50_ms": round(out["p50_us"] / 1000, 3),
        "p90_ms": round(out["p90_us"] / 1000, 3),
        "p99_ms": round(out["p99_us"] / 1000, 3),
        "max_ms": round(out["max_us"] / 1000, 3),
        "errors": errors,
        "error_detail": {
            k: out[k]
            for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
            if out[k]
        },
        "server_cpu_s": round(cpu_s, 3),
        "cpu_ms_per_req": round(cpu_s * 1000 / ok, 4) if ok else None,
        "cpu_ms_per_req_by_process": {
            name: round(v * 1000 / ok, 4) for name, v in sorted(cpu_by_name.items())
        }
        if ok
        else {},
        "server_processes": len(after),
        "server_rss_mb": rss_mb(set(after)),
        "loadavg_1m_before": round(load_before, 2),
    }


def inprocess_reference(model: BenchModel, batch_sizes: list[int], repeats: int) -> dict[str, Any]:
    """The pipeline's own predict_proba in this process, one thread: the batch baseline."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    pipeline = model.load()
    one = np.array([[batch_rows(1)[0][f] for f in FEATURES]], dtype=float)
    with threadpool_limits(limits=1):
        reference: dict[str, Any] = {
            "predict_proba_1row_us": round(median_us(lambda: pipeline.predict_proba(one), repeats), 1)
        }
        for n in batch_sizes:
            X = np.array([[r[f] for f in FEATURES] for r in batch_rows(n)], dtype=float)
            us = median_us(lambda: pipeline.predict_proba(X), max(3, min(repeats, 7)), warmup=1, budget_s=20)
            reference[f"batch_{n}_rows_s"] = round(n / (us / 1e6), 1)
    return reference


def expected_classes(model: BenchModel, rows: list[dict[str, float]]) -> list[str]:
    import numpy as np

    X = np.array([[r[f] for f in FEATURES] for r in rows], dtype=float)
    proba = model.load().predict_proba(X)
    return [model.classes[i] for i in proba.argmax(axis=1)]


# --- the run ---------------------------------------------------------------------------
@dataclass
class Bench:
    args: argparse.Namespace
    wrk: str
    work: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    servers_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    models_info: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)

    def log(self, message: str) -> None:
        print(message, flush=True)

    def make_servers(self, model: BenchModel) -> list[Server]:
        if self.args.product_variants:
            servers: list[Server] = [
                ProductServer(self.work, model, env={**self.product_env(), **variant_env(spec)}, variant=spec)
                for spec in self.args.product_variants
            ]
        else:
            servers = [ProductServer(self.work, model, env=self.product_env())]
        if not self.args.skip_v2:
            servers.append(ProductV2Server(self.work, model, env=self.product_env()))
        if not self.args.skip_book:
            servers.append(BookServer(self.work, model))
        if not self.args.skip_mlserver:
            servers.append(MLServer(self.work, model, parallel_workers=self.args.mlserver_workers))
        elif "mlserver" not in self.servers_info:
            reason = "smoke mode" if self.args.smoke else "--skip-mlserver"
            self.log(f"SKIPPED mlserver: {reason}")
            self.servers_info["mlserver"] = {"label": MLServer.label, "skipped": reason}
        return servers

    def product_env(self) -> dict[str, str]:
        env = {}
        for name in ("api_workers", "api_worker_class", "api_threads", "api_blas_threads"):
            value = getattr(self.args, name)
            if value is not None:
                env[name.upper()] = str(value)
        return env

    def run_model(self, model: BenchModel, plan: list[Scenario]) -> None:
        self.log(f"\n=== model {model.name}: {model.description}")
        reference = inprocess_reference(
            model, sorted({s.rows for s in plan if s.is_batch}), repeats=50 if self.args.smoke else 300
        )
        self.models_info.append(
            {
                "name": model.name,
                "description": model.description,
                "pipeline": model.meta.get("pipeline"),
                "inprocess": reference,
            }
        )
        self.log(f"in-process (one thread): {reference}")
        started: list[Server] = []
        try:
            for server in self.make_servers(model):
                try:
                    t0 = time.monotonic()
                    server.start()
                except Exception as exc:
                    server.stop()
                    # MLServer is an outside program: one that cannot be installed or started is
                    # skipped with the reason. The product and the baseline must run.
                    if server.name != "mlserver" and not isinstance(exc, ServerUnavailable):
                        raise
                    reason = str(exc) if isinstance(exc, ServerUnavailable) else f"did not start: {exc}"
                    self.log(f"SKIPPED {server.name}: {reason}")
                    self.servers_info.setdefault(server.name, {"label": server.label})["skipped"] = reason
                    continue
                started.append(server)
                info = self.servers_info.setdefault(server.name, {"label": server.label})
                info.update({"config": server.config(), "skipped": None})
                self.log(
                    f"started {server.name} ({server.label}) in {time.monotonic() - t0:.1f} s: {server.url}"
                )
            bodies = self.write_bodies(model, started, plan)
            for server in started:  # warm every server up (caches, lazy imports, connection pools)
                run_wrk(self.wrk, server.url, bodies[(server.name, 1)], 4, self.args.warmup)
            for scenario in plan:
                rows = batch_rows(scenario.rows, seed=1)
                expected = expected_classes(model, rows)
                for server in started:
                    server.probe(rows, expected)
                for repeat in range(self.args.repeats):
                    order = started[repeat % len(started) :] + started[: repeat % len(started)]
                    for server in order:
                        result = measure(
                            self.wrk,
                            server,
                            bodies[(server.name, scenario.rows)],
                            scenario,
                            self.args.duration,
                        )
                        result.update(
                            {
                                "model": model.name,
                                "server": server.name,
                                "scenario": scenario.name,
                                "rows_per_request": scenario.rows,
                                "connections": scenario.connections,
                                "repeat": repeat,
                            }
                        )
                        self.runs.append(result)
                        self.log(
                            f"[{model.name} | {scenario.name} | round {repeat + 1}] {server.name:9s} "
                            f"{result['req_s']:9.1f} req/s  p50 {result['p50_ms']:8.2f} ms  "
                            f"p99 {result['p99_ms']:8.2f} ms  errors {result['errors']}  "
                            f"cpu {result['cpu_ms_per_req']} ms/req"
                        )
                if self.wants_profile(scenario):
                    for server in started:
                        if server.name.startswith("product"):
                            self.profile(model, scenario, server, bodies[(server.name, scenario.rows)])
        finally:
            for server in reversed(started):
                server.stop()

    def write_bodies(
        self, model: BenchModel, servers: list[Server], plan: list[Scenario]
    ) -> dict[tuple[str, int], Path]:
        directory = self.work / "bodies" / model.name
        directory.mkdir(parents=True, exist_ok=True)
        bodies = {}
        for server in servers:
            for n in sorted({1, *(s.rows for s in plan)}):
                path = directory / f"{server.name}-{n}.json"
                path.write_bytes(server.encode(batch_rows(n, seed=1)))
                bodies[(server.name, n)] = path
        return bodies

    # --- optional profile of the product's workers (py-spy) ---------------------------
    def wants_profile(self, scenario: Scenario) -> bool:
        if not self.args.profile:
            return False
        return (
            scenario.rows == 1 and scenario.connections == TARGET_CONCURRENCY
        ) or scenario.rows == TARGET_BATCH_ROWS

    def profile(self, model: BenchModel, scenario: Scenario, product: Server, body: Path) -> None:
        """One extra product run with py-spy on each API worker (not counted in the summary)."""
        from .profile import profile_run

        out_dir = self.work / "profiles" / f"{model.name}-{scenario.rows}x{scenario.connections}"
        report = profile_run(
            product,
            out_dir,
            lambda: measure(self.wrk, product, body, scenario, self.args.duration),
            self.args.duration,
        )
        report.update({"model": model.name, "scenario": scenario.name})
        self.profiles.append(report)
        self.log(f"[{model.name} | {scenario.name}] profile: {report.get('error') or report['categories']}")


def variant_env(spec: str) -> dict[str, str]:
    """``sync:3`` or ``gthread:2x4`` (class:workers[xthreads]) as the API's environment."""
    try:
        worker_class, counts = spec.split(":")
        workers, _, threads = counts.partition("x")
        env = {
            "API_WORKER_CLASS": worker_class,
            "API_WORKERS": str(int(workers)),
            "API_THREADS": str(int(threads or 1)),
        }
    except ValueError as exc:
        raise SystemExit(
            f"--product-variants: {spec!r} is not CLASS:WORKERS[xTHREADS] (e.g. sync:3, gthread:2x4)"
        ) from exc
    if worker_class not in ("sync", "gthread"):
        raise SystemExit(f"--product-variants: unknown worker class {worker_class!r}")
    return env


# --- summary ------------------------------------------------------------------------
def summarize(runs: list[dict[str, Any]], models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over repeats per (model, scenario, server), with ratios to book and MLServer."""
    inprocess = {m["name"]: m["inprocess"] for m in models}
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["scenario"], run["server"]), []).append(run)
    rows = []
    for (model, scenario, server), group in groups.items():

        def med(key: str) -> float | None:
            values = [r[key] for r in group if r.get(key) is not None]
            return round(statistics.median(values), 4) if values else None

        rows.append(
            {
                "model": model,
                "scenario": scenario,
                "server": server,
                "rows_per_request": group[0]["rows_per_request"],
                "connections": group[0]["connections"],
                "repeats": len(group),
                "req_s": med("req_s"),
                "rows_s": med("rows_s"),
                "p50_ms": med("p50_ms"),
                "p99_ms": med("p99_ms"),
                "errors": sum(r["errors"] for r in group),
                "cpu_ms_per_req": med("cpu_ms_per_req"),
                "rss_mb": med("server_rss_mb"),
                "req_s_min": min(r["req_s"] for r in group),
                "req_s_max": max(r["req_s"] for r in group),
            }
        )
    index = {(r["model"], r["scenario"], r["server"]): r for r in rows}
    for row in rows:
        for other in ("book", "mlserver"):
            base = index.get((row["model"], row["scenario"], other))
            ratio = None
            if base and base["req_s"] and row["req_s"] is not None:
                ratio = round(row["req_s"] / base["req_s"], 2)
            row[f"vs_{other}"] = ratio
        row["p99_over_p50"] = round(row["p99_ms"] / row["p50_ms"], 2) if row["p50_ms"] else None
        reference = inprocess.get(row["model"], {}).get(f"batch_{row['rows_per_request']}_rows_s")
        row["vs_inprocess"] = (
            round(row["rows_s"] / reference, 3) if reference and row["rows_per_request"] > 1 else None
        )
    order = {name: i for i, name in enumerate(SERVER_ORDER)}
    rows.sort(
        key=lambda r: (
            [m["name"] for m in models].index(r["model"]) if r["model"] in inprocess else 99,
            r["rows_per_request"],
            r["connections"],
            order.get(r["server"], 9),
            r["server"],
        )
    )
    return rows


def targets(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's acceptance numbers, checked on this run's medians (None: not measured)."""

    def find(rows: int, connections: int | None, server: str = "product") -> dict[str, Any] | None:
        for row in summary:
            if (row["model"], row["server"], row["rows_per_request"]) == (TARGET_MODEL, server, rows) and (
                connections is None or row["connections"] == connections
            ):
                return row
        return None

    one = find(1, TARGET_CONCURRENCY)
    batch = find(TARGET_BATCH_ROWS, None)
    checks = [
        (
            f"{TARGET_MODEL}, 1 row, c={TARGET_CONCURRENCY}: req/s vs book",
            one and one["vs_book"],
            TARGET_VS_BOOK,
            ">=",
        ),
        (
            f"{TARGET_MODEL}, 1 row, c={TARGET_CONCURRENCY}: req/s vs MLServer",
            one and one["vs_mlserver"],
            TARGET_VS_MLSERVER,
            ">=",
        ),
        (
            f"{TARGET_MODEL}, 1 row, c={TARGET_CONCURRENCY}: p99 / p50",
            one and one["p99_over_p50"],
            TARGET_P99_OVER_P50,
            "<=",
        ),
        (
            f"{TARGET_MODEL}, {TARGET_BATCH_ROWS} rows: rows/s vs in-process",
            batch and batch["vs_inprocess"],
            TARGET_BATCH_SHARE,
            ">=",
        ),
    ]
    out = []
    for name, value, threshold, op in checks:
        met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
        out.append({"target": name, "value": value, "threshold": f"{op} {threshold}", "met": met})
    return out


def capacity(
    summary: list[dict[str, Any]], rates: tuple[int, ...] = (100, 500, 1000, 2000, 5000)
) -> list[dict[str, Any]]:
    """API replicas (each as benchmarked: one Gunicorn with its workers on this machine's cores)
    for a request rate, from the product's measured one-row throughput at the target concurrency,
    run at 70% of it so p99 stays near what was measured."""
    out = []
    for row in summary:
        if (
            row["server"] != "product"
            or row["rows_per_request"] != 1
            or row["connections"] != TARGET_CONCURRENCY
        ):
            continue
        if not row["req_s"]:
            continue
        usable = 0.7 * row["req_s"]
        out.append(
            {
                "model": row["model"],
                "measured_req_s": row["req_s"],
                "usable_req_s_per_replica": round(usable, 1),
                "cpu_ms_per_req": row["cpu_ms_per_req"],
                "replicas": {
                    str(rate): max(1, -(-rate // int(usable))) if usable >= 1 else None for rate in rates
                },
                "cores_at_full_use": {
                    str(rate): round(rate * row["cpu_ms_per_req"] / 1000, 2) for rate in rates
                }
                if row["cpu_ms_per_req"]
                else None,
            }
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# tpotserve benchmark: {result['label']}", ""]
    machine = result["machine"]
    lines += [
        f"{result['started_at']} - {result['finished_at']}, {machine['cores']} cores, load average "
        f"{machine['loadavg_start']} at the start and {machine['loadavg_end']} at the end; "
        f"{result['settings']['repeats']} rounds of {result['settings']['duration_s']} s "
        "per server and scenario "
        f"(servers alternating); wrk {machine['wrk']}."
        + (
            " **Smoke mode: these numbers only show the tooling works.**"
            if result["settings"]["smoke"]
            else ""
        ),
        "",
    ]
    for name, info in result["servers"].items():
        state = f"skipped: {info['skipped']}" if info.get("skipped") else json.dumps(info.get("config", {}))
        lines.append(f"- **{name}**: {info['label']} ({state})")
    lines.append("")
    for model in result["models"]:
        lines += [
            f"## {model['name']}: {model['description']}",
            "",
            f"In-process (one thread): {json.dumps(model['inprocess'])}",
            "",
            "| scenario | server | req/s | rows/s | p50 ms | p99 ms | p99/p50 | errors | CPU ms/req "
            "| RSS MiB | x book | x MLServer | x in-process |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in result["summary"]:
            if row["model"] != model["name"]:
                continue
            cells = [
                row["scenario"],
                row["server"],
                _f(row["req_s"], 1),
                _f(row["rows_s"], 0),
                _f(row["p50_ms"], 2),
                _f(row["p99_ms"], 2),
                _f(row["p99_over_p50"], 2),
                str(row["errors"]),
                _f(row["cpu_ms_per_req"], 3),
                _f(row.get("rss_mb"), 0),
                _f(row["vs_book"], 2),
                _f(row["vs_mlserver"], 2),
                _f(row["vs_inprocess"], 2),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Targets", "", "| target | value | wanted | met |", "|---|---:|---:|---|"]
    for t in result["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {_f(t['value'], 2)} | {t['threshold']} | {met} |")
    lines.append("")
    if result["capacity"]:
        rates = list(result["capacity"][0]["replicas"])
        lines += [
            "## API replicas for a request rate (one-row requests, each replica run at 70% of its "
            f"measured c={TARGET_CONCURRENCY} rate)",
            "",
            "| model | measured req/s | " + " | ".join(f"{r} req/s" for r in rates) + " |",
            "|---|---:|" + "---:|" * len(rates),
        ]
        for c in result["capacity"]:
            lines.append(
                f"| {c['model']} | {_f(c['measured_req_s'], 0)} | "
                + " | ".join(str(c["replicas"][r]) for r in rates)
                + " |"
            )
        lines.append("")
    if result.get("profiles"):
        from .profile import profile_markdown

        lines += profile_markdown(result["profiles"])
    return "\n".join(lines) + "\n"


def _f(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    return (done.stdout or done.stderr).splitlines()[0].strip() if (done.stdout or done.stderr) else "?"


# --- command line ----------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds: forest only, c=1 and 4, one 1,000-row batch, 2 s runs, once, no MLServer",
    )
    parser.add_argument("--models", nargs="+", default=None, help="forest and/or tpot (default: both)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="rounds per server and scenario (default 3)"
    )
    parser.add_argument("--duration", type=int, default=None, help="seconds per run (default 10)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=None, help="one-row clients (default 1 16 64)"
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="*", default=None, help="rows per batch (default 1000 10000)"
    )
    parser.add_argument(
        "--batch-concurrency", type=int, default=1, help="clients in the batch test (default 1)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="seconds of warm-up per server (default 3)")
    parser.add_argument("--skip-mlserver", action="store_true", help="do not install or run MLServer")
    parser.add_argument("--skip-book", action="store_true", help="do not run the book-style baseline")
    parser.add_argument("--skip-v2", action="store_true", help="do not run the product through its V2 endpoint")
    parser.add_argument(
        "--mlserver-workers", type=int, default=1, help="MLServer parallel_workers (its default: 1)"
    )
    parser.add_argument(
        "--api-workers", type=int, default=None, help="the product's API_WORKERS for this run"
    )
    parser.add_argument("--api-worker-class", choices=["sync", "gthread"], default=None)
    parser.add_argument("--api-threads", type=int, default=None)
    parser.add_argument("--api-blas-threads", type=int, default=None)
    parser.add_argument(
        "--product-variants",
        nargs="+",
        default=None,
        metavar="CLASS:WORKERS[xTHREADS]",
        help="compare Gunicorn configurations side by side instead of one product "
        "(e.g. sync:2 sync:3 sync:4 gthread:2x4); book and MLServer then skipped unless asked",
    )
    parser.add_argument(
        "--with-baselines", action="store_true", help="with --product-variants: run book/MLServer too"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the product's workers during the c=16 and 10,000-row runs (first round)",
    )
    parser.add_argument(
        "--label", default=None, help="name of this run in the results (default: full or smoke)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--work-dir", type=Path, default=WORK)
    args = parser.parse_args(argv)
    smoke = args.smoke
    defaults = {
        "models": ["forest"] if smoke else ["forest", "tpot"],
        "repeats": 1 if smoke else 3,
        "duration": 2 if smoke else 10,
        "concurrency": [1, 4] if smoke else [1, 16, 64],
        "batch_sizes": [1000] if smoke else [1000, 10_000],
        "warmup": 1 if smoke else 3,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if smoke:
        args.skip_mlserver = True
    if args.product_variants:
        for spec in args.product_variants:
            variant_env(spec)  # refuse a bad spec before anything starts
        if not args.with_baselines:
            args.skip_mlserver = args.skip_book = args.skip_v2 = True
    args.label = args.label or ("smoke" if smoke else "full")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = wrk_binary()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    started_at = utc_iso()
    load_start = os.getloadavg()
    if load_start[0] > (os.cpu_count() or 1) * 0.5 and not args.smoke:
        print(
            f"warning: load average {load_start[0]:.1f} on {os.cpu_count()} cores: the machine is not quiet; "
            "numbers will be low and noisy",
            flush=True,
        )
    bench = Bench(args=args, wrk=wrk, work=args.work_dir)
    plan = scenarios(args.concurrency, args.batch_sizes, args.batch_concurrency)
    t0 = time.monotonic()
    models = build(args.models, args.work_dir)
    for model in models:
        bench.run_model(model, plan)
    summary = summarize(bench.runs, bench.models_info)
    result = {
        "label": args.label,
        "started_at": started_at,
        "finished_at": utc_iso(),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "machine": {
            "cores": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "kernel": platform.release(),
            "python": platform.python_version(),
            "wrk": wrk_version(wrk),
        },
        "settings": {
            "smoke": args.smoke,
            "models": args.models,
            "repeats": args.repeats,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "batch_sizes": args.batch_sizes,
            "batch_concurrency": args.batch_concurrency,
            "warmup_s": args.warmup,
        },
        "servers": bench.servers_info,
        "models": bench.models_info,
        "runs": bench.runs,
        "summary": summary,
        "targets": targets(summary),
        "capacity": capacity(summary),
        "profiles": bench.profiles,
    }
    stem = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{args.label}"
    json_path = args.results_dir / f"{stem}.json"
    md_path = args.results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown(result))
    print("\n" + markdown(result), flush=True)
    print(f"results: {json_path}\n         {md_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
