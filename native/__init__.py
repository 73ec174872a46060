"""The native run: the compose stack as local processes (docs/architecture.md lists its modules)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
"""The checkout the services run from (their cwd; the entrypoints, templates and web root in it)."""
