"""What the API's per-worker background threads (the monitor's flusher, the shadow runner)
share: a thread started once in each process, and warnings at most once a minute."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


class ProcessThread:
    """A daemon thread started on first use in each process.

    Not at construction: Gunicorn may fork the workers after ``create_app`` ran, and a
    thread does not survive a fork. The check on the serving path is one ``getpid``."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._target = target
        self._name = name
        self._pid: int | None = None
        self._lock = threading.Lock()

    def ensure(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._target, name=self._name, daemon=True).start()


class Throttle:
    """True at most once every ``every_s`` seconds: one log line a minute while Redis is
    down, not one per flush."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = -every_s

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last <= self.every_s:
            return False
        self._last = now
        return True
