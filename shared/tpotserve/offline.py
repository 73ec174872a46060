"""Keep ``import tpot`` from phoning home.

tpot's ``__init__`` calls ``update_checker.update_check`` on import, an HTTP
request to PyPI. Offline or air-gapped that costs a timeout at every worker
start and prints noise; a server must not depend on it. Call this before
anything imports tpot (unpickling a TPOT pipeline does).
"""

from __future__ import annotations


def disable_tpot_update_check() -> None:
    """Replace the update check tpot runs at import with a no-op."""
    try:
        import update_checker
    except ImportError:  # tpot not installed in this process: nothing to do
        return
    update_checker.update_check = lambda *args, **kwargs: None
