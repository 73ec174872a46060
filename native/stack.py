"""The native run: the compose stack as local processes on loopback.

``make run`` and the integration tests both use this. It renders nginx's
config from the same template compose uses, starts redis-server, the two RQ
workers, Gunicorn and nginx with the same entrypoints as the Dockerfiles
(:data:`SERVICE_COMMANDS`, checked against them by tests/unit/test_containers.py),
waits for each to be healthy, and on SIGINT/SIGTERM stops every process it
started, by process group, and nothing else. Under ``make run`` (:func:`main`) a
service that dies is restarted with backoff by :mod:`native.supervisor`.

    python -m native.stack            # foreground, logs to the console and DATA_DIR/logs
    python -m native.stack --api-instances 2 --dask-workers 2   # scaled out (docs/scaling.md)
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tpotserve.settings import Settings

from .proc import descendants

REPO = Path(__file__).resolve().parent.parent

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
NGINX_TEMPLATE_DIR = "nginx/templates"
NGINX_TEMPLATE = "nginx/templates/default.conf.template"
NGINX_MAIN_TEMPLATE = "nginx/native.conf.template"
# Sourced by the nginx image's entrypoint and by render_nginx(): sets GATEWAY_TLS.
NGINX_TLS_SCRIPT = "nginx/entrypoint.d/15-tpotserve-tls.envsh"

# Settings the nginx template reads (compose passes the same names to the nginx image).
NGINX_SETTINGS = (
    "MAX_BODY_BYTES",
    "METRICS_ALLOW",
    "PREDICT_RATE_LIMIT",
    "PREDICT_RATE_BURST",
    "RETRAIN_RATE_LIMIT",
    "RETRAIN_RATE_BURST",
)
_PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Substitute ``${NAME}`` like the nginx image's envsubst step: only names given."""
    rendered = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    missing = sorted(set(_PLACEHOLDER.findall(rendered)))
    if missing:
        raise ValueError(f"template needs values for {missing}")
    return rendered


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_binary(name: str) -> str:
    """The path of a binary the stack needs; a missing one is an error, never a skip."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise RuntimeError(f"{name} is not installed (make setup installs it on Debian)")
    return path


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

    @staticmethod
    def instance_name(kind: str, index: int) -> str:
        """The n-th (1-based) instance of a service: "api", "api-2", "api-3"..."""
        return kind if index == 1 else f"{kind}-{index}"

    @staticmethod
    def service_kind(name: str) -> str:
        """"api-2" -> "api"; names that are not numbered instances stay as they are."""
        match = _INSTANCE.fullmatch(name)
        return match["kind"] if match and match["kind"] in _SCALABLE else name

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
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

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
        env = dict(os.environ)
        env.update(self.env)
        env["MODEL_SIGNING_KEY"] = self.signing_key()
        env.update(
            {
                "PATH": f"{self.venv_bin}{os.pathsep}{env.get('PATH', '')}",
                "MODEL_DIR": str(self.model_dir),
                "DATASET_DIR": str(self.data_dir / "datasets"),
                "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "API_BIND": f"127.0.0.1:{self.api_port}",
                "PYTHONUNBUFFERED": "1",
            }
        )
        # Only Gunicorn shares metric files, one directory per API instance (each empties its own
        # at start); TPOT's Dask in the workers imports prometheus-client too: not into these.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if name is not None and name.startswith("api"):
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.data_dir / "metrics" / name)
        if self.dask_workers and not env.get("DASK_SCHEDULER_ADDRESS"):
            env["DASK_SCHEDULER_ADDRESS"] = self.dask_scheduler_address
        if name is not None and self.service_kind(name) == "api":
            env["API_BIND"] = f"127.0.0.1:{self.api_port_of(name)}"
        if name is not None and self.service_kind(name) == "scheduler":
            env["SCHEDULER_HEARTBEAT_FILE"] = str(self.heartbeat_file(name))
        if name is not None and name.startswith("dask-"):
            # Dask runs whatever its clients submit: it gets none of the stack's secrets.
            for secret in ("MODEL_SIGNING_KEY", "API_KEY", "PREDICT_API_KEY"):
                env.pop(secret, None)
        return env

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
        if name == "redis":
            argv = [
                require_binary("redis-server"),
                *REDIS_COMMAND[1:],
                "--bind", "127.0.0.1",
                "--port", str(self.redis_port),
                "--dir", str(self.data_dir / "redis"),
                "--save", "",
            ]
            self._spawn(name, argv)
            self._wait(name, self._redis_up, timeout_s)
        elif name == "nginx":
            argv = [require_binary("nginx"), "-c", str(self.render_nginx()), "-e", "stderr"]
            self._spawn(name, argv)
            self._wait(name, lambda: self._http_ok(f"{self.gateway_url}/healthz"), timeout_s)
        elif name == "rq-dashboard":
            argv = [
                str(self.venv_bin / RQ_DASHBOARD_COMMAND[0]),
                *RQ_DASHBOARD_COMMAND[1:],
                "--bind", "127.0.0.1",
                "--port", str(self.rq_dashboard_port),
                "--redis-url", f"redis://127.0.0.1:{self.redis_port}/0",
            ]
            self._spawn(name, argv)
            dashboard = f"http://127.0.0.1:{self.rq_dashboard_port}/rq/"
            self._wait(name, lambda: self._http_ok(dashboard), timeout_s)
        elif name == "dask-scheduler":
            argv = [
                str(self.venv_bin / DASK_SCHEDULER_COMMAND[0]),
                *DASK_SCHEDULER_COMMAND[1:],
                "--host", "127.0.0.1",
                "--port", str(self.dask_port),
                "--dashboard-address", "127.0.0.1:0",
            ]
            self._spawn(name, argv)
            self._wait(name, lambda: self._port_open(self.dask_port), timeout_s)
        elif self.service_kind(name) == "dask-worker":
            scratch = self.data_dir / "dask" / name
            scratch.mkdir(parents=True, exist_ok=True)
            argv = [
                str(self.venv_bin / DASK_WORKER_COMMAND[0]),
                *DASK_WORKER_COMMAND[1:],
                "--host", "127.0.0.1",
                "--dashboard-address", "127.0.0.1:0",
                "--local-directory", str(scratch),
            ]
            self._spawn(name, argv)
            self._wait(name, lambda: "Registered to:" in self._log_since_start(name), timeout_s)
        elif self.service_kind(name) in SERVICE_COMMANDS:
            kind = self.service_kind(name)
            command = SERVICE_COMMANDS[kind]
            if kind == "scheduler":
                self.heartbeat_file(name).unlink(missing_ok=True)
            self._spawn(name, [str(REPO / command[0]), *command[1:]])
            if kind == "api":
                port = self.api_port_of(name)
                self._wait(name, lambda: self._http_ok(f"http://127.0.0.1:{port}/healthz"), timeout_s)
            elif kind == "scheduler":
                self._wait(name, lambda: self._scheduler_ticked(name), timeout_s)
            else:
                self._wait(name, lambda: self._worker_listening(name), timeout_s)
        else:
            raise ValueError(f"unknown service {name!r}")

    def stop_service(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        """Signal a service's process group, wait, then kill whatever of its tree is left."""
        proc = self.processes.pop(name, None)
        if proc is None:
            return
        # RQ's work-horse puts itself in a process group of its own (with TPOT's
        # Dask processes under it): remember the whole tree before it is orphaned.
        tree = descendants(proc.popen.pid)
        _signal_group(proc.popen, sig)
        try:
            proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc.popen, signal.SIGKILL)
            proc.popen.wait(timeout=10)
        _signal_group(proc.popen, signal.SIGKILL)
        for pid in tree | descendants(proc.popen.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.pump.join(timeout=5)

    def stop(self) -> None:
        """Stop everything this stack started, gateway first, Redis last."""
        for name in reversed(list(self.processes)):
            self.stop_service(name)

    def gateway_tls(self) -> str:
        """"on" or "off", decided by the same script the nginx image sources at start."""
        result = subprocess.run(
            ["sh", "-c", '. "$0" && printf %s "$GATEWAY_TLS"', str(REPO / NGINX_TLS_SCRIPT)],
            env={**self.service_env("nginx"), **self._tls_files()},
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or result.stdout not in ("on", "off"):
            raise RuntimeError(f"nginx TLS settings: {result.stderr.strip() or result.stdout!r}")
        return result.stdout

    def _tls_files(self) -> dict[str, str]:
        """TLS_CERT_FILE / TLS_KEY_FILE as absolute paths ("" when unset): nginx would
        resolve a relative one against its own prefix, not the directory they were given in."""
        env = self.service_env("nginx")
        return {
            name: str(Path(env[name]).resolve()) if env.get(name) else ""
            for name in ("TLS_CERT_FILE", "TLS_KEY_FILE")
        }

    def render_nginx(self) -> Path:
        """Render every template under nginx/templates into DATA_DIR/nginx/conf.d, as the image's
        envsubst step does into /etc/nginx/conf.d, and the main config that includes them."""
        nginx_dir = self.data_dir / "nginx"
        conf_dir = nginx_dir / "conf.d"
        acme_root = self.data_dir / "acme"
        acme_root.mkdir(parents=True, exist_ok=True)
        values = {
            "API_SERVERS": "\n    ".join(f"server 127.0.0.1:{port};" for port in self.api_ports),
            "NGINX_LISTEN": f"127.0.0.1:{self.gateway_port}",
            "NGINX_TLS_LISTEN": f"127.0.0.1:{self.gateway_tls_port}",
            "GATEWAY_TLS_PORT": str(self.gateway_tls_port),
            "GATEWAY_TLS": self.gateway_tls(),
            **self._tls_files(),
            "NGINX_CONF_DIR": str(conf_dir),
            "ACME_ROOT": str(acme_root),
            # Only IP addresses here: nothing to resolve, but the directive must be valid.
            "RESOLVER": "127.0.0.1",
            "WEB_ROOT": str(REPO / "web"),
            "RQ_DASHBOARD_URL": f"http://127.0.0.1:{self.rq_dashboard_port}",
            # The same values the API reads, e.g. so both refuse the same bodies.
            **{name: self._setting(name) for name in NGINX_SETTINGS},
        }
        templates = REPO / NGINX_TEMPLATE_DIR
        for template in sorted(templates.rglob("*.template")):
            out = conf_dir / template.relative_to(templates).with_suffix("")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render_template(template.read_text(), values))
        main_conf = nginx_dir / "nginx.conf"
        main_conf.write_text(
            render_template(
                (REPO / NGINX_MAIN_TEMPLATE).read_text(),
                {
                    "DATA_DIR_NGINX": str(nginx_dir),
                    "SERVER_CONF": str(conf_dir / "default.conf"),
                    # `user` is only allowed (and only needed) when the master runs as root.
                    "NGINX_USER": f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else "",
                },
            )
        )
        return main_conf

    def _setting(self, name: str) -> str:
        """A setting as the services see it: their environment, else the Settings default."""
        value = self.service_env().get(name)
        return value if value else str(Settings.model_fields[name.lower()].default)

    def log_text(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- internals ---------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log_path = self.log_dir / f"{name}.log"
        # A restarted service appends to its old log: readiness only reads what this run wrote.
        self._log_offsets[name] = log_path.stat().st_size if log_path.exists() else 0
        popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env=self.service_env(name),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we stop exactly what we started
        )
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

    def _redis_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def heartbeat_file(self, name: str = "scheduler") -> Path:
        return self.data_dir / "scheduler" / f"{name}.alive"

    def _scheduler_ticked(self, name: str) -> bool:
        # The scheduler writes its heartbeat file after each tick, the first one at start
        # (removed before it is spawned, so an old one does not count).
        return self.heartbeat_file(name).exists()

    def _worker_listening(self, name: str) -> bool:
        # RQ logs this once it has registered and is waiting on its queues.
        return "Listening on" in self._log_since_start(name)

    def _log_since_start(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(self._log_offsets.get(name, 0))
            return handle.read().decode(errors="replace")

    @staticmethod
    def _port_open(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except ProcessLookupError:
        pass


def main() -> int:
    """Foreground run for `make run`: start, print where things are, stop on a signal."""
    from tpotserve.settings import load_settings  # validates the environment early

    import argparse

    from native.supervisor import Supervisor, become_subreaper

    parser = argparse.ArgumentParser(prog="python -m native.stack", description="the stack, natively")
    parser.add_argument("--api-instances", type=int, default=1, help="Gunicorn instances behind nginx")
    parser.add_argument("--dask-workers", type=int, default=0, help="start a Dask cluster of N workers")
    parser.add_argument("--dashboard", action="store_true", help="also the RQ dashboard at /rq/ (admin key)")
    args = parser.parse_args()
    settings = load_settings()
    stack = NativeStack(
        data_dir=settings.data_dir,
        gateway_port=settings.gateway_port,
        gateway_tls_port=settings.gateway_tls_port,
        echo=True,
        api_instances=args.api_instances,
        dask_workers=args.dask_workers,
    )

    stopping = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # Only a list append here: a handler that set an Event could run again inside that
        # set() (SIGTERM from make, then from the process group) and deadlock on the Event's
        # own lock. A thread turns the first signal into the stop.
        signals.append(signum)

    def watch_signals() -> None:
        while not signals:
            time.sleep(0.1)
        stopping.set()
        stack.cancel.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    threading.Thread(target=watch_signals, name="signals", daemon=True).start()
    # Before the first spawn: orphans of any service (a killed RQ worker's horse) stay below us.
    become_subreaper()
    print(f"starting tpotserve natively; data in {stack.data_dir}", flush=True)
    supervisor: Supervisor | None = None
    try:
        stack.start()
        if args.dashboard:
            stack.start_service("rq-dashboard")
        if settings.api_key is None:
            print("API_KEY is not set: /retrain and activate answer 503 until you set it.", flush=True)
        if stack.gateway_tls() == "on":
            print(f"TLS on: {stack.gateway_tls_url} (plain HTTP redirects there)", flush=True)
        else:
            print("TLS off: plain HTTP, for local use (docs/deploy.md turns TLS on)", flush=True)
        # From here on only the supervising thread spawns: it alone may reap adopted zombies.
        supervisor = Supervisor(stack)
        supervisor.start()
        print(
            f"\nready: {stack.gateway_url}  (POST /predict, POST /retrain, GET /models, GET /readyz)\n"
            f"logs:  {stack.log_dir}/\nstop:  Ctrl-C (a service that dies is restarted)\n",
            flush=True,
        )
        while not stopping.wait(1.0):
            pass
    except Cancelled:
        pass  # Ctrl-C during the start: stop below, as after it
    finally:
        print("stopping every process this run started...", flush=True)
        if supervisor is not None:
            supervisor.stop()
        stack.stop()
        if supervisor is not None:
            supervisor.kill_leftovers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
