"""The services a native run starts, as one table: each one's command, environment and readiness.

:data:`SERVICES` maps a service's kind ("api" for "api", "api-2", ...) to how it is run:
its argv, what its environment adds to the one every service gets (:func:`service_env`),
what to do before it is spawned, and the probe that says it is ready. The entrypoints are
the Dockerfiles' (:data:`SERVICE_COMMANDS`, checked against them by tests/unit/test_containers.py).

The table reads the running stack through :class:`Stack`, the part of
:class:`native.stack.NativeStack` it needs (its ports, its DATA_DIR, its logs).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import REPO

# The one source of truth for what each service runs. The Dockerfiles'
# ENTRYPOINT/CMD and docker-compose.yml's `command:` must say the same.
SERVICE_COMMANDS: dict[str, list[str]] = {
    "api": ["services/api/entrypoint.sh"],
    "worker": ["services/trainer/entrypoint.sh", "training"],
    "worker-control": ["services/trainer/entrypoint.sh", "control"],
    "scheduler": ["services/trainer/entrypoint.sh", "scheduler"],
}
REDIS_COMMAND = ["redis-server", "--appendonly", "yes"]
# The optional queue dashboard (not started by default), served by nginx at /rq/ behind the
# admin key; compose's `dashboard` profile runs the same command. --disable-delete: a page
# a browser opens with the admin's Basic credentials cached must not be able to delete jobs.
RQ_DASHBOARD_COMMAND = ["rq-dashboard", "--url-prefix", "/rq", "--disable-delete"]
# The optional Dask cluster (compose's `dask` profile runs the same commands, from the
# trainer's image): searches run on it when the training workers have DASK_SCHEDULER_ADDRESS.
# Each worker one process with one thread (TPOT's pipelines are GIL-bound); scale by count.
# `dask worker` reads DASK_SCHEDULER_ADDRESS itself (Dask's config), so it takes no address.
DASK_SCHEDULER_COMMAND = ["dask", "scheduler"]
DASK_WORKER_COMMAND = ["dask", "worker", "--nworkers", "1", "--nthreads", "1"]
# Services that run as several numbered instances natively: "api", "api-2", "dask-worker-2", ...
_SCALABLE = ("api", "dask-worker")
_INSTANCE = re.compile(r"(?P<kind>.+)-(?P<index>[0-9]+)")
_SECRETS = ("MODEL_SIGNING_KEY", "API_KEY", "PREDICT_API_KEY")


def instance_name(kind: str, index: int) -> str:
    """The n-th (1-based) instance of a service: "api", "api-2", "api-3"..."""
    return kind if index == 1 else f"{kind}-{index}"


def service_kind(name: str) -> str:
    """"api-2" -> "api"; names that are not numbered instances stay as they are."""
    match = _INSTANCE.fullmatch(name)
    return match["kind"] if match and match["kind"] in _SCALABLE else name


def require_binary(name: str) -> str:
    """The path of a binary the stack needs; a missing one is an error, never a skip."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise RuntimeError(f"{name} is not installed (make setup installs it on Debian)")
    return path


class Stack(Protocol):
    """What the table reads of the stack that runs the services (NativeStack has it all)."""

    data_dir: Path
    env: dict[str, str]
    venv_bin: Path
    redis_port: int
    api_port: int
    rq_dashboard_port: int
    dask_port: int
    dask_workers: int

    @property
    def model_dir(self) -> Path: ...
    @property
    def dataset_dir(self) -> Path: ...
    @property
    def gateway_url(self) -> str: ...
    @property
    def dask_scheduler_address(self) -> str: ...
    def signing_key(self) -> str: ...
    def api_port_of(self, name: str) -> int: ...
    def heartbeat_file(self, name: str = "scheduler") -> Path: ...
    def render_nginx(self) -> Path: ...
    def log_since_start(self, name: str) -> str: ...


# --- readiness probes ------------------------------------------------------------
def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _scheduler_ticked(stack: Stack, name: str) -> bool:
    # The scheduler writes its heartbeat file after each tick, the first one at start
    # (removed before it is spawned, so an old one does not count).
    return stack.heartbeat_file(name).exists()


def _worker_listening(stack: Stack, name: str) -> bool:
    # RQ logs this once it has registered and is waiting on its queues.
    return "Listening on" in stack.log_since_start(name)


# --- the table ---------------------------------------------------------------------
@dataclass(frozen=True)
class Service:
    """How one kind of service is run; each callable gets the stack and the instance's name."""

    argv: Callable[[Stack, str], list[str]]
    ready: Callable[[Stack, str], bool]
    """Polled after the spawn until it is true (or the process exits, or time runs out)."""
    env: Callable[[Stack, str], dict[str, str]] = lambda stack, name: {}
    """What this service's environment adds to every service's."""
    prepare: Callable[[Stack, str], None] = lambda stack, name: None
    """Run before the spawn."""
    secrets: bool = True
    """False: the environment keeps none of the stack's secrets."""


def _entrypoint(kind: str) -> Callable[[Stack, str], list[str]]:
    command = SERVICE_COMMANDS[kind]
    return lambda stack, name: [str(REPO / command[0]), *command[1:]]


def _redis_argv(stack: Stack, name: str) -> list[str]:
    return [
        require_binary("redis-server"),
        *REDIS_COMMAND[1:],
        "--bind", "127.0.0.1",
        "--port", str(stack.redis_port),
        "--dir", str(stack.data_dir / "redis"),
        "--save", "",
    ]


def _rq_dashboard_argv(stack: Stack, name: str) -> list[str]:
    return [
        str(stack.venv_bin / RQ_DASHBOARD_COMMAND[0]),
        *RQ_DASHBOARD_COMMAND[1:],
        "--bind", "127.0.0.1",
        "--port", str(stack.rq_dashboard_port),
        "--redis-url", f"redis://127.0.0.1:{stack.redis_port}/0",
    ]


def _dask_scheduler_argv(stack: Stack, name: str) -> list[str]:
    return [
        str(stack.venv_bin / DASK_SCHEDULER_COMMAND[0]),
        *DASK_SCHEDULER_COMMAND[1:],
        "--host", "127.0.0.1",
        "--port", str(stack.dask_port),
        "--dashboard-address", "127.0.0.1:0",
    ]


def _dask_scratch(stack: Stack, name: str) -> Path:
    return stack.data_dir / "dask" / name


def _dask_worker_argv(stack: Stack, name: str) -> list[str]:
    return [
        str(stack.venv_bin / DASK_WORKER_COMMAND[0]),
        *DASK_WORKER_COMMAND[1:],
        "--host", "127.0.0.1",
        "--dashboard-address", "127.0.0.1:0",
        "--local-directory", str(_dask_scratch(stack, name)),
    ]


def _api_env(stack: Stack, name: str) -> dict[str, str]:
    # Its own metrics directory per API instance (see service_env).
    return {
        "PROMETHEUS_MULTIPROC_DIR": str(stack.data_dir / "metrics" / name),
        "API_BIND": f"127.0.0.1:{stack.api_port_of(name)}",
    }


SERVICES: dict[str, Service] = {
    "redis": Service(argv=_redis_argv, ready=lambda stack, name: redis_up(stack.redis_port)),
    "nginx": Service(
        argv=lambda stack, name: [require_binary("nginx"), "-c", str(stack.render_nginx()), "-e", "stderr"],
        ready=lambda stack, name: http_ok(f"{stack.gateway_url}/healthz"),
    ),
    "rq-dashboard": Service(
        argv=_rq_dashboard_argv,
        ready=lambda stack, name: http_ok(f"http://127.0.0.1:{stack.rq_dashboard_port}/rq/"),
    ),
    "dask-scheduler": Service(
        argv=_dask_scheduler_argv, ready=lambda stack, name: port_open(stack.dask_port), secrets=False
    ),
    "dask-worker": Service(
        argv=_dask_worker_argv,
        ready=lambda stack, name: "Registered to:" in stack.log_since_start(name),
        prepare=lambda stack, name: _dask_scratch(stack, name).mkdir(parents=True, exist_ok=True),
        secrets=False,
    ),
    "api": Service(
        argv=_entrypoint("api"),
        ready=lambda stack, name: http_ok(f"http://127.0.0.1:{stack.api_port_of(name)}/healthz"),
        env=_api_env,
    ),
    "worker": Service(argv=_entrypoint("worker"), ready=_worker_listening),
    "worker-control": Service(argv=_entrypoint("worker-control"), ready=_worker_listening),
    "scheduler": Service(
        argv=_entrypoint("scheduler"),
        ready=_scheduler_ticked,
        env=lambda stack, name: {"SCHEDULER_HEARTBEAT_FILE": str(stack.heartbeat_file(name))},
        prepare=lambda stack, name: stack.heartbeat_file(name).unlink(missing_ok=True),
    ),
}
"""Every service a native run can start, by kind."""


def lookup(name: str) -> Service:
    """The table's entry for ``name`` (an instance's name: "api-2" is an "api")."""
    try:
        return SERVICES[service_kind(name)]
    except KeyError:
        raise ValueError(f"unknown service {name!r}") from None


def service_env(stack: Stack, name: str | None = None) -> dict[str, str]:
    """The environment of service ``name`` (None: what every service gets): ours, the stack's
    ``env``, and where the stack's Redis, models and data sets are."""
    env = dict(os.environ)
    env.update(stack.env)
    env["MODEL_SIGNING_KEY"] = stack.signing_key()
    env.update(
        {
            "PATH": f"{stack.venv_bin}{os.pathsep}{env.get('PATH', '')}",
            "MODEL_DIR": str(stack.model_dir),
            "DATASET_DIR": str(stack.dataset_dir),
            "REDIS_URL": f"redis://127.0.0.1:{stack.redis_port}/0",
            "API_BIND": f"127.0.0.1:{stack.api_port}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # Only Gunicorn shares metric files, one directory per API instance (each empties its own
    # at start); TPOT's Dask in the workers imports prometheus-client too: not into these.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if stack.dask_workers and not env.get("DASK_SCHEDULER_ADDRESS"):
        env["DASK_SCHEDULER_ADDRESS"] = stack.dask_scheduler_address
    entry = SERVICES.get(service_kind(name)) if name is not None else None
    if entry is not None:
        env.update(entry.env(stack, name))
        if not entry.secrets:
            # Dask runs whatever its clients submit: it gets none of the stack's secrets.
            for secret in _SECRETS:
                env.pop(secret, None)
    return env
