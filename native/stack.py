"""The native run's lifecycle: the compose stack as local processes on loopback, started and stopped as one.

``make run`` (:mod:`native.__main__`) and the integration tests both use :class:`NativeStack`.
It starts redis-server, the two RQ workers, the scheduler, Gunicorn and nginx as
:mod:`native.services` says (the Dockerfiles' entrypoints, each service's environment and
readiness probe), nginx on the config :mod:`native.nginx_conf` renders from the templates
compose uses, waits for each to be ready before the next, and on :meth:`NativeStack.stop`
stops every process it started, by process group (:mod:`native.processes`), and nothing else.
Under ``make run`` a service that dies is restarted with backoff by :mod:`native.supervisor`.

``python -m native.stack`` still runs ``make run``'s launcher (``python -m native``).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from . import REPO, nginx_conf
from . import services as table
from .nginx_conf import (
    NGINX_MAIN_TEMPLATE,
    NGINX_SETTINGS,
    NGINX_TEMPLATE,
    NGINX_TEMPLATE_DIR,
    NGINX_TLS_SCRIPT,
    render_template,
)
from .proc import descendants
from .processes import start_group, stop_group
from .services import (
    DASK_SCHEDULER_COMMAND,
    DASK_WORKER_COMMAND,
    REDIS_COMMAND,
    RQ_DASHBOARD_COMMAND,
    SERVICE_COMMANDS,
    require_binary,
)

# The names this module had before its parts moved out; tests, bench and docs import them from here.
__all__ = [
    "DASK_SCHEDULER_COMMAND",
    "DASK_WORKER_COMMAND",
    "NGINX_MAIN_TEMPLATE",
    "NGINX_SETTINGS",
    "NGINX_TEMPLATE",
    "NGINX_TEMPLATE_DIR",
    "NGINX_TLS_SCRIPT",
    "REDIS_COMMAND",
    "REPO",
    "RQ_DASHBOARD_COMMAND",
    "SERVICE_COMMANDS",
    "Cancelled",
    "NativeStack",
    "Process",
    "descendants",
    "free_port",
    "render_template",
    "require_binary",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cancelled(RuntimeError):
    """A health wait given up because :attr:`NativeStack.cancel` was set (the stack is stopping)."""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path
    pump: threading.Thread


@dataclass
class NativeStack:
    """The stack's processes, started and stopped as one."""

    data_dir: Path
    gateway_port: int = 8080
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for every service (API_KEY, TPOT_* ...)."""
    echo: bool = False
    """Copy every service's log lines to our stdout (foreground `make run`)."""
    venv_bin: Path = field(default_factory=lambda: Path(sys.executable).parent)
    api_instances: int = 1
    """Gunicorn instances ("api", "api-2", ...), each on its own port behind nginx
    (compose: --scale api=N)."""
    dask_workers: int = 0
    """Above 0: start a Dask scheduler and this many Dask workers ("dask-worker", "dask-worker-2", ...),
    and point the training workers at it unless ``env`` sets DASK_SCHEDULER_ADDRESS."""
    gateway_tls_port: int = 8443
    """Where nginx serves HTTPS when TLS_CERT_FILE and TLS_KEY_FILE are set (in ``env`` or ours)."""

    instance_name = staticmethod(table.instance_name)
    service_kind = staticmethod(table.service_kind)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.redis_port = free_port()
        self.api_port = free_port()
        self.rq_dashboard_port = free_port()
        self.dask_port = free_port()
        self.processes: dict[str, Process] = {}
        self.extra_api_ports: list[int] = [free_port() for _ in range(self.api_instances - 1)]
        self._log_offsets: dict[str, int] = {}
        self.cancel = threading.Event()
        """Set it to end a health wait in progress (the launcher stopping mid-start or mid-restart)."""

    # --- paths and environment ---------------------------------------------
    @property
    def api_ports(self) -> list[int]:
        """The ports of the API instances nginx balances over (one by default)."""
        return [self.api_port, *self.extra_api_ports]

    def api_port_of(self, name: str) -> int:
        """The port of the API instance ``name`` ("api" -> api_port, "api-2" -> extra_api_ports[0])."""
        if name == "api":
            return self.api_port
        index = int(name.rpartition("-")[2])
        while len(self.extra_api_ports) < index - 1:
            self.extra_api_ports.append(free_port())
        return self.extra_api_ports[index - 2]

    @property
    def dask_scheduler_address(self) -> str:
        """Where this stack's own Dask scheduler listens (when it starts one)."""
        return f"tcp://127.0.0.1:{self.dask_port}"

    def default_services(self) -> tuple[str, ...]:
        """What start() starts: the compose default, scaled, plus the Dask cluster if asked for."""
        dask_workers = (self.instance_name("dask-worker", i + 1) for i in range(self.dask_workers))
        dask = ("dask-scheduler", *dask_workers)
        return (
            "redis",
            *(dask if self.dask_workers else ()),
            "worker-control",
            "worker",  # the training queue's one consumer (tpotserve.jobs.TRAINING_QUEUE)
            "scheduler",  # the retraining policies (tpotserve_trainer.scheduler)
            *(self.instance_name("api", i + 1) for i in range(self.api_instances)),
            "nginx",
        )

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def gateway_tls_url(self) -> str:
        return f"https://127.0.0.1:{self.gateway_tls_port}"

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def dataset_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def heartbeat_file(self, name: str = "scheduler") -> Path:
        return self.data_dir / "scheduler" / f"{name}.alive"

    def signing_key(self) -> str:
        """MODEL_SIGNING_KEY from the environment, or one generated once per DATA_DIR.

        A native run signs its models like compose does; the generated key is
        kept (mode 0600) beside the models it signed, so restarts keep serving them.
        """
        given = self.env.get("MODEL_SIGNING_KEY") or os.environ.get("MODEL_SIGNING_KEY")
        if given:
            return given
        path = self.data_dir / "signing.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return path.read_text().strip()

    def service_env(self, name: str | None = None) -> dict[str, str]:
        """Service ``name``'s environment (:func:`native.services.service_env`)."""
        return table.service_env(self, name)

    def gateway_tls(self) -> str:
        """"on" or "off", decided by the same script the nginx image sources at start."""
        return nginx_conf.gateway_tls(self.service_env("nginx"))

    def render_nginx(self) -> Path:
        """nginx's config for this stack in DATA_DIR/nginx (:func:`native.nginx_conf.render_nginx`)."""
        return nginx_conf.render_nginx(
            data_dir=self.data_dir,
            env=self.service_env("nginx"),
            api_ports=self.api_ports,
            gateway_port=self.gateway_port,
            gateway_tls_port=self.gateway_tls_port,
            rq_dashboard_port=self.rq_dashboard_port,
        )

    # --- lifecycle ---------------------------------------------------------
    def start(self, services: tuple[str, ...] | None = None) -> None:
        """Start the named services (default: :meth:`default_services`) in order, each healthy
        before the next."""
        for path in (self.model_dir, self.log_dir, self.data_dir / "redis", self.data_dir / "nginx"):
            path.mkdir(parents=True, exist_ok=True)
        try:
            for name in services if services is not None else self.default_services():
                self.start_service(name)
        except BaseException:
            self.stop()
            raise

    def start_service(self, name: str, timeout_s: float = 90.0) -> None:
        """Spawn ``name`` as :data:`native.services.SERVICES` says and wait until it is ready."""
        service = table.lookup(name)
        service.prepare(self, name)
        self._spawn(name, service.argv(self, name))
        self._wait(name, lambda: service.ready(self, name), timeout_s)

    def stop_service(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        """Signal a service's process group, wait, then kill whatever of its tree is left."""
        proc = self.processes.pop(name, None)
        if proc is None:
            return
        stop_group(proc.popen, sig, timeout_s)
        proc.pump.join(timeout=5)

    def stop(self) -> None:
        """Stop everything this stack started, gateway first, Redis last."""
        for name in reversed(list(self.processes)):
            self.stop_service(name)

    # --- logs ----------------------------------------------------------------
    def log_text(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_since_start(self, name: str) -> str:
        """What ``name`` logged since it was last spawned."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(self._log_offsets.get(name, 0))
            return handle.read().decode(errors="replace")

    # --- internals ---------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.log_dir / f"{name}.log"
        # A restarted service appends to its old log: readiness only reads what this run wrote.
        self._log_offsets[name] = log_path.stat().st_size if log_path.exists() else 0
        popen = start_group(argv, cwd=REPO, env=self.service_env(name), stdout=subprocess.PIPE)
        pump = threading.Thread(target=self._pump, args=(name, popen.stdout, log_path), daemon=True)
        pump.start()
        self.processes[name] = Process(name, popen, log_path, pump)

    def _pump(self, name: str, stream: IO[bytes], log_path: Path) -> None:
        with open(log_path, "ab") as log:
            for line in stream:
                log.write(line)
                log.flush()
                if self.echo:
                    sys.stdout.write(f"{name:>14} | {line.decode(errors='replace')}")
                    sys.stdout.flush()

    def _wait(self, name: str, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        proc = self.processes[name].popen
        while time.monotonic() < deadline:
            if self.cancel.is_set():
                raise Cancelled(f"{name}: stopped before it was ready")
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; last log lines:\n{self._tail(name)}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{name} not ready after {timeout_s:.0f} s; last log lines:\n{self._tail(name)}")

    def _tail(self, name: str, lines: int = 30) -> str:
        return "\n".join(self.log_text(name).splitlines()[-lines:])


if __name__ == "__main__":  # `python -m native.stack`: the launcher's first name, kept working
    from native.__main__ import main

    sys.exit(main())
