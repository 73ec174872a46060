"""``make run``'s launcher: the stack in the foreground, supervised, until SIGINT/SIGTERM.

    python -m native            # foreground, logs to the console and DATA_DIR/logs
    python -m native --api-instances 2 --dask-workers 2   # scaled out (docs/scaling.md)

(``python -m native.stack`` runs the same :func:`main`.) It starts :class:`native.stack.NativeStack`,
prints where things are, hands the running stack to :class:`native.supervisor.Supervisor` (a
service that dies is restarted with backoff) and on a signal stops every process it started.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from tpotserve.settings import load_settings  # validates the environment early

from native.stack import Cancelled, NativeStack
from native.supervisor import Supervisor, become_subreaper


def main() -> int:
    """Foreground run for `make run`: start, print where things are, stop on a signal."""
    args = _arguments()
    settings = load_settings()
    stack = NativeStack(
        data_dir=settings.data_dir,
        gateway_port=settings.gateway_port,
        gateway_tls_port=settings.gateway_tls_port,
        echo=True,
        api_instances=args.api_instances,
        dask_workers=args.dask_workers,
    )
    stopping = _stop_on_signals(stack)
    # Before the first spawn: orphans of any service (a killed RQ worker's horse) stay below us.
    become_subreaper()
    print(f"starting tpotserve natively; data in {stack.data_dir}", flush=True)
    supervisor: Supervisor | None = None
    try:
        stack.start()
        if args.dashboard:
            stack.start_service("rq-dashboard")
        _say_how_it_runs(stack, settings.api_key is None)
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


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m native", description="the stack, natively")
    parser.add_argument("--api-instances", type=int, default=1, help="Gunicorn instances behind nginx")
    parser.add_argument("--dask-workers", type=int, default=0, help="start a Dask cluster of N workers")
    parser.add_argument("--dashboard", action="store_true", help="also the RQ dashboard at /rq/ (admin key)")
    return parser.parse_args()


def _stop_on_signals(stack: NativeStack) -> threading.Event:
    """SIGINT and SIGTERM cancel a start in progress and end the run; the event is set then."""
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
    return stopping


def _say_how_it_runs(stack: NativeStack, no_api_key: bool) -> None:
    if no_api_key:
        print("API_KEY is not set: /retrain and activate answer 503 until you set it.", flush=True)
    if stack.gateway_tls() == "on":
        print(f"TLS on: {stack.gateway_tls_url} (plain HTTP redirects there)", flush=True)
    else:
        print("TLS off: plain HTTP, for local use (docs/deploy.md turns TLS on)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
