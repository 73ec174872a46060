"""Backups of every named model and the uploaded data sets, consistent while the stack runs.

    python -m tpotserve.backup create ARCHIVE|-            # - writes the archive to stdout
    python -m tpotserve.backup restore ARCHIVE|- [--force] [--only models|datasets]

The modules, one job each:

    format.py    the archive format: member names, the manifest's format and version, size limits
    common.py    what both directions share: BackupError, RestoreError, the log, a store's entries
    snapshot.py  copying each model's store and each data set into an archive, consistently
    creating.py  writing an archive: create (to a stream), create_file (to a new file, atomically)
    verify.py    checking an archive's members and every file against its manifest
    restoring.py restoring an archive: stage, verify, plan, apply (the pointers last)
    cli.py       the command line (``__main__.py`` runs it)
"""

from .cli import build_parser, main
from .common import BackupError, RestoreError
from .creating import create, create_file
from .format import (
    FORMAT,
    FORMAT_VERSION,
    KEY_MEMBER,
    MANIFEST_NAME,
    READABLE_VERSIONS,
    SIDE_FILES,
    SMALL_MEMBER_MAX_BYTES,
)
from .restoring import restore, restore_file

__all__ = [
    "FORMAT", "FORMAT_VERSION", "KEY_MEMBER", "MANIFEST_NAME", "READABLE_VERSIONS", "SIDE_FILES",
    "SMALL_MEMBER_MAX_BYTES", "BackupError", "RestoreError", "build_parser", "create", "create_file", "main",
    "restore", "restore_file",
]
