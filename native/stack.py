"""The native run: the compose stack as local processes on loopback.

``make run`` and the integration tests both use this. It renders nginx's
config from the same template compose uses, starts redis-server, the two RQ
workers, Gunicorn and nginx with the same entrypoints as the Dockerfiles
(:data:`SERVICE_COMMANDS`, checked against them by tests/unit/test_containers.py),
waits for each to be healthy, and on SIGINT/SIGTERM stops every process it
started, by process group, and nothing else.

    python -m native.stack            # foreground, logs to the console and DATA_DIR/logs
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

REPO = Path(__file__).resolve().parent.parent

# The one source of truth for what each service runs. The Dockerfiles'
# ENTRYPOINT/CMD and docker-compose.yml's `command:` must say the same.
SERVICE_COMMANDS: dict[str, list[str]] = {
    "api": ["services/api/entrypoint.sh"],
    "worker": ["services/trainer/entrypoint.sh", "training"],
    "worker-control": ["services/trainer/entrypoint.sh", "control"],
}
REDIS_COMMAND = ["redis-server", "--appendonly", "yes"]
NGINX_TEMPLATE = "nginx/templates/default.conf.template"
NGINX_MAIN_TEMPLATE = "nginx/native.conf.template"

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

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.redis_port = free_port()
        self.api_port = free_port()
        self.rq_dashboard_port = free_port()
        self.processes: dict[str, Process] = {}
        self.extra_api_ports: list[int] = []

    # --- paths and environment ---------------------------------------------
    @property
    def api_ports(self) -> list[int]:
        """The ports of the API instances nginx balances over (one by default)."""
        return [self.api_port, *self.extra_api_ports]

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

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

    def service_env(self) -> dict[str, str]:
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
        return env

    # --- lifecycle ---------------------------------------------------------
    def start(self, services: tuple[str, ...] = ("redis", "worker-control", "worker", "api", "nginx")) -> None:
        """Start the named services in order, each healthy before the next."""
        for path in (self.model_dir, self.log_dir, self.data_dir / "redis", self.data_dir / "nginx"):
            path.mkdir(parents=True, exist_ok=True)
        try:
            for name in services:
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
        elif name in SERVICE_COMMANDS:
            command = SERVICE_COMMANDS[name]
            self._spawn(name, [str(REPO / command[0]), *command[1:]])
            if name == "api":
                self._wait(name, lambda: self._http_ok(f"http://127.0.0.1:{self.api_port}/healthz"), timeout_s)
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

    def render_nginx(self) -> Path:
        nginx_dir = self.data_dir / "nginx"
        server_conf = nginx_dir / "default.conf"
        server_conf.write_text(
            render_template(
                (REPO / NGINX_TEMPLATE).read_text(),
                {
                    "API_SERVERS": "\n    ".join(f"server 127.0.0.1:{port};" for port in self.api_ports),
                    "NGINX_LISTEN": f"127.0.0.1:{self.gateway_port}",
                    # Only IP addresses here: nothing to resolve, but the directive must be valid.
                    "RESOLVER": "127.0.0.1",
                    "WEB_ROOT": str(REPO / "web"),
                    "RQ_DASHBOARD_URL": f"http://127.0.0.1:{self.rq_dashboard_port}",
                    # The same values the API reads, e.g. so both refuse the same bodies.
                    **{name: self._setting(name) for name in NGINX_SETTINGS},
                },
            )
        )
        main_conf = nginx_dir / "nginx.conf"
        main_conf.write_text(
            render_template(
                (REPO / NGINX_MAIN_TEMPLATE).read_text(),
                {
                    "DATA_DIR_NGINX": str(nginx_dir),
                    "SERVER_CONF": str(server_conf),
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
        popen = subprocess.Popen(
            argv,
            cwd=REPO,
            env=self.service_env(),
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

    def _worker_listening(self, name: str) -> bool:
        # RQ logs this once it has registered and is waiting on its queues.
        return "Listening on" in self.log_text(name)

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command may contain spaces and parentheses: the ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except ProcessLookupError:
        pass


def main() -> int:
    """Foreground run for `make run`: start, print where things are, stop on a signal."""
    from tpotserve.settings import load_settings  # validates the environment early

    settings = load_settings()
    stack = NativeStack(data_dir=settings.data_dir, gateway_port=settings.gateway_port, echo=True)

    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"starting tpotserve natively; data in {stack.data_dir}", flush=True)
    try:
        stack.start()
        if settings.api_key is None:
            print("API_KEY is not set: /retrain and activate answer 503 until you set it.", flush=True)
        print(
            f"\nready: {stack.gateway_url}  (POST /predict, POST /retrain, GET /models, GET /readyz)\n"
            f"logs:  {stack.log_dir}/\nstop:  Ctrl-C\n",
            flush=True,
        )
        while not stopping.is_set():
            for proc in stack.processes.values():
                if proc.popen.poll() is not None:
                    print(f"{proc.name} exited with {proc.popen.returncode}; stopping", flush=True)
                    stopping.set()
            stopping.wait(1.0)
    finally:
        print("stopping every process this run started...", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
