"""Gunicorn settings, derived from the one Settings object.

Used as ``gunicorn --config python:tpotserve_api.gunicorn_config`` by both
the container and the native launcher.
"""

from tpotserve.settings import load_settings

_settings = load_settings()

bind = [_settings.api_bind]
workers = _settings.api_workers
worker_class = "sync"
# Workers load the model before they accept requests; import tpot alone takes seconds.
timeout = 60
graceful_timeout = 20
# No preload: each worker builds its own app and model holder after the fork,
# so a respawned worker reads the pointer instead of inheriting a stale model.
preload_app = False
# Heartbeat files on tmpfs: a container's overlay filesystem can stall them.
worker_tmp_dir = "/dev/shm"
# The app logs one JSON line per request (tpotserve_api.app); Gunicorn's own
# access log would only repeat it without the model version.
accesslog = None
errorlog = "-"
