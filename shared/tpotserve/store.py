"""The model store: immutable versions on a shared volume plus one pointer file.

    <root>/versions/<version>/model.joblib   the fitted scikit-learn pipeline, plain joblib
    <root>/versions/<version>/meta.json      schema, classes, scores, settings, sha256, library versions
    <root>/current.json                      {"version", "sha256", "activated_at"}: the only mutable file

Only the trainer writes here. A version is written under a dot-prefixed temp
directory, fsynced, and renamed into place; the pointer is replaced with one
``os.replace``. A reader therefore sees either the old pointer or the new one,
and a pointer only ever names a complete version. Versions are identified by
id and sha256, never by inode or mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactRejected, NotFound

ARTIFACT_NAME = "model.joblib"
META_NAME = "meta.json"
POINTER_NAME = "current.json"
_TMP_PREFIX = ".tmp-"
# Readable by an API running as another user; mkstemp's 0600 would not be.
_FILE_MODE = 0o644
_DIR_MODE = 0o755


@dataclass(frozen=True)
class Pointer:
    """What current.json says: the version to serve and the hash it must have."""

    version: str
    sha256: str


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def new_version_id() -> str:
    """A sortable, unique version id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), _FILE_MODE)  # the umask must not make it private
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class ModelStore:
    """Reads and (in the trainer) writes the model volume at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.pointer_path = self.root / POINTER_NAME

    # --- reading (API and trainer) -----------------------------------------
    def read_pointer(self) -> Pointer | None:
        """The current pointer, or None when no model was ever published."""
        try:
            raw = self.pointer_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            return Pointer(version=str(data["version"]), sha256=str(data["sha256"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactRejected(f"{POINTER_NAME} is unreadable: {exc}") from exc

    def artifact_path(self, version: str) -> Path:
        return self._version_dir(version) / ARTIFACT_NAME

    def read_meta(self, version: str) -> dict[str, Any]:
        """A version's metadata; NotFound when the version does not exist."""
        path = self._version_dir(version) / META_NAME
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise NotFound(f"model version {version!r} does not exist", field="version") from exc
        except ValueError as exc:
            raise ArtifactRejected(f"metadata of {version!r} is unreadable: {exc}") from exc

    def list_versions(self) -> list[dict[str, Any]]:
        """Metadata of every complete version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        metas = []
        for entry in sorted(self.versions_dir.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                metas.append(self.read_meta(entry.name))
            except (NotFound, ArtifactRejected):
                continue  # not a complete version; never served, not listed
        return metas

    def verified_artifact(self, version: str, expected_sha256: str) -> Path:
        """The artifact's path once its bytes hash to ``expected_sha256``."""
        path = self.artifact_path(version)
        try:
            actual = sha256_file(path)
        except FileNotFoundError as exc:
            raise ArtifactRejected(f"artifact of {version!r} is missing") from exc
        if not secrets.compare_digest(actual.encode(), str(expected_sha256).encode()):
            raise ArtifactRejected(
                f"artifact of {version!r} has sha256 {actual[:12]}…, expected {expected_sha256[:12]}…"
            )
        return path

    # --- writing (trainer only) --------------------------------------------
    def write_version(
        self, version: str, dump: Callable[[Path], None], meta: dict[str, Any]
    ) -> dict[str, Any]:
        """Write a complete version atomically and return its final metadata.

        ``dump(path)`` writes the artifact; the store hashes it, adds
        ``sha256`` and ``version`` to ``meta``, fsyncs both files and renames
        the directory into place. Nothing is visible under ``versions/``
        until the rename.
        """
        for directory in (self.root, self.versions_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        final = self._version_dir(version)
        tmp = self.versions_dir / f"{_TMP_PREFIX}{version}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=_DIR_MODE)
        os.chmod(tmp, _DIR_MODE)  # mkdir's mode is narrowed by the umask
        try:
            artifact = tmp / ARTIFACT_NAME
            dump(artifact)
            os.chmod(artifact, _FILE_MODE)
            with open(artifact, "rb") as handle:
                os.fsync(handle.fileno())
            meta = {**meta, "version": version, "sha256": sha256_file(artifact)}
            _write_file(tmp / META_NAME, json.dumps(meta, indent=2, sort_keys=True).encode())
            _fsync_dir(tmp)
            os.rename(tmp, final)
            _fsync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return meta

    def set_current(self, version: str) -> Pointer:
        """Point current.json at a stored, verified version (publish and rollback)."""
        meta = self.read_meta(version)
        self.verified_artifact(version, meta["sha256"])
        pointer = Pointer(version=version, sha256=meta["sha256"])
        body = {"version": version, "sha256": meta["sha256"], "activated_at": _utc_now()}
        tmp = self.root / f"{_TMP_PREFIX}{POINTER_NAME}-{secrets.token_hex(4)}"
        try:
            _write_file(tmp, json.dumps(body).encode())
            os.replace(tmp, self.pointer_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)
        return pointer

    def remove_stale_temp(self, older_than_s: float = 0.0) -> list[str]:
        """Delete temp leftovers of a writer that died mid-write; returns their names."""
        removed = []
        now = time.time()
        for parent in (self.root, self.versions_dir):
            if not parent.is_dir():
                continue
            for entry in parent.iterdir():
                if not entry.name.startswith(_TMP_PREFIX):
                    continue
                if now - entry.stat().st_mtime < older_than_s:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry.name)
        return removed

    def _version_dir(self, version: str) -> Path:
        # A version id comes from URLs too: refuse anything that is not a plain name.
        if not version or "/" in version or version.startswith(".") or "\x00" in version:
            raise NotFound(f"model version {version!r} does not exist", field="version")
        return self.versions_dir / version


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
