"""Structured logs: one JSON object per line, from the API and the trainer.

Fields go in ``extra={"fields": {...}}``; the formatter merges them into the
line. Nothing here ever sees a request's headers, so keys cannot leak.
"""

from __future__ import annotations

import json
import logging
import sys
import time

OUR_LOGGERS = ("tpotserve", "tpotserve_api", "tpotserve_trainer")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...fields}`` on one line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure(service: str, level: int = logging.INFO) -> None:
    """Send our loggers' records to stderr as JSON lines (idempotent)."""
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
            continue
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(service))
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
