"""Settings module for the ``rq worker --config`` CLI, derived from Settings.

Importing the job module here loads TPOT (2-4 s) once in the worker's main
process, so each forked work-horse starts with it already imported.
"""

from tpotserve import logs
from tpotserve.settings import load_settings, signing_key

from . import jobs  # noqa: F401 - preload TPOT before the fork

logs.configure("worker")
_settings = load_settings()
signing_key(_settings)  # no key, no worker: refuse to start rather than write unsigned models
REDIS_URL = _settings.redis_url
