"""What creating and restoring an archive share: their errors, the log, a store's complete entries."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import TpotServeError


class BackupError(TpotServeError):
    """A backup could not be made; nothing was written under the archive's name."""

    code = "backup_failed"


class RestoreError(TpotServeError):
    """A restore was refused or failed; no pointer was written."""

    code = "restore_failed"


Log = Callable[[str], None]


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def plain_entries(directory: Path) -> list[str]:
    """Names of the complete entries of a store directory: never dot-prefixed temp directories."""
    if not directory.is_dir():
        return []
    return sorted(e.name for e in directory.iterdir() if not e.name.startswith(".") and e.is_dir())
