"""The model store: immutable versions on a shared volume plus one pointer file.

    <root>/versions/<version>/model.joblib   the fitted scikit-learn pipeline, plain joblib
    <root>/versions/<version>/meta.json      schema, classes, scores, settings, sha256, library versions
    <root>/versions/<version>/<document>     leaderboard.json, card.json, card.md, profile.json, model.onnx,
                                             feedback_rows.csv: sha256 in meta.json "files"
    <root>/versions/<version>/compiled.json  a compiled form added later (``tpotserve compile``) to a version
                                             whose meta.json has none: the only file added to a written version
    <root>/current.json                      {"version", "sha256", "activated_at"}: the served version
    <root>/activations.jsonl                 every change of current.json, one JSON line each, with its reason
    <root>/policy.json                       the retraining policy (tpotserve.policy), if one was set
    <root>/shadow.json                       the version in shadow (tpotserve.shadow), if any

Only the trainer writes here. A version is written under a dot-prefixed temp
directory, fsynced, and renamed into place; the pointer is replaced with one
``os.replace``. A reader therefore sees either the old pointer or the new one,
and a pointer only ever names a complete version. Versions are identified by
id and sha256, never by inode or mtime.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import (
    TMP_PREFIX,
    write_durably,
    new_directory,
    remove_temp_leftovers,
    replace_file,
    sha256_file,
    write_new_file,
)
from .clock import utc_iso
from .errors import ArtifactRejected, Conflict, NotFound
from .signing import digest_file, same, sign_bytes

__all__ = ["ModelStore", "Pointer", "new_version_id", "sha256_file"]

ARTIFACT_NAME = "model.joblib"
META_NAME = "meta.json"
POINTER_NAME = "current.json"
ACTIVATIONS_NAME = "activations.jsonl"
POLICY_NAME = "policy.json"
SHADOW_NAME = "shadow.json"
LOCK_NAME = ".publish.lock"
DOCUMENTS = ("leaderboard.json", "card.json", "card.md", "profile.json", "model.onnx", "feedback_rows.csv")
"""Files a version may hold beside its artifact, each covered by a sha256 in meta.json
(profile.json: the training rows' reference for drift, ``tpotserve.drift``; model.onnx: the
compiled form, ``tpotserve.compiled``, also signed in meta.json's ``compiled``)."""
SIDECAR_NAME = "compiled.json"
PUBLISH_WAIT_S = 120.0
"""How long a publisher waits for another one (a prune of many versions takes seconds)."""


@dataclass(frozen=True)
class Pointer:
    """What current.json says: the version to serve and the hash it must have."""

    version: str
    sha256: str
    previous: str | None = None
    """The version that was current before this one (protected from retention)."""

    def same_model(self, other: Pointer | None) -> bool:
        return other is not None and (self.version, self.sha256) == (other.version, other.sha256)


def new_version_id() -> str:
    """A sortable, unique version id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


class ModelStore:
    """Reads and (in the trainer) writes the model volume at ``root``."""

    def __init__(self, root: Path, signing_key: bytes | None = None) -> None:
        """``signing_key``: sign what is written, and refuse to verify anything unsigned
        or signed with another key. None only in the explicit insecure mode."""
        self.root = Path(root)
        self.signing_key = signing_key
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
            previous = data.get("previous")
            return Pointer(
                version=str(data["version"]),
                sha256=str(data["sha256"]),
                previous=str(previous) if previous else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArtifactRejected(f"{POINTER_NAME} is unreadable: {exc}") from exc

    def artifact_path(self, version: str) -> Path:
        return self._version_dir(version) / ARTIFACT_NAME

    def read_meta(self, version: str) -> dict[str, Any]:
        """A version's metadata; NotFound when the version does not exist."""
        path = self._version_dir(version) / META_NAME
        try:
            return json.loads(path.read_text())
        except OSError as exc:  # missing, or a name the filesystem cannot even hold
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

    def list_version_ids(self) -> list[str]:
        """Ids of the stored versions, oldest first (without reading their metadata)."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            entry.name for entry in self.versions_dir.iterdir() if entry.is_dir() and not entry.name.startswith(".")
        )

    def verified_artifact(self, version: str, expected_sha256: str) -> Path:
        """The artifact's path once its bytes hash to ``expected_sha256`` and, with a
        signing key, carry a valid signature. Call before unpickling, always."""
        path = self.artifact_path(version)
        try:
            digests = digest_file(path, self.signing_key)
        except FileNotFoundError as exc:
            raise ArtifactRejected(f"artifact of {version!r} is missing") from exc
        if not same(digests.sha256, expected_sha256):
            raise ArtifactRejected(
                f"artifact of {version!r} has sha256 {digests.sha256[:12]}…, expected {str(expected_sha256)[:12]}…"
            )
        if self.signing_key is not None:
            signature = self.read_meta(version).get("signature")
            if not same(digests.signature, signature):
                raise ArtifactRejected(
                    f"artifact of {version!r} has no valid signature: it was not written by a trainer "
                    "holding this MODEL_SIGNING_KEY"
                )
        return path

    def read_document(self, version: str, name: str) -> bytes:
        """A document stored beside a version's artifact (its leaderboard, its card), once
        its bytes hash to what the version's meta.json recorded. NotFound when the version
        has none by that name (versions written before it existed)."""
        meta = self.read_meta(version)
        expected = (meta.get("files") or {}).get(name)
        if name not in DOCUMENTS or expected is None:
            raise NotFound(f"model version {version!r} has no {name}", field="version")
        try:
            raw = (self._version_dir(version) / name).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactRejected(f"{name} of {version!r} is missing") from exc
        if not same(hashlib.sha256(raw).hexdigest(), expected):
            raise ArtifactRejected(f"{name} of {version!r} does not match the sha256 in its meta.json")
        return raw

    def compiled_record(self, version: str) -> dict[str, Any] | None:
        """A version's compiled-form record: meta.json's ``compiled`` or, for a version compiled
        after it was written, its compiled.json; None when it has neither."""
        meta = self.read_meta(version)
        record = meta.get("compiled")
        if isinstance(record, dict):
            return record
        try:
            raw = (self._version_dir(version) / SIDECAR_NAME).read_bytes()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise ArtifactRejected(f"{SIDECAR_NAME} of {version!r} is unreadable: {exc}") from exc
        if not isinstance(record, dict) or not same(record.get("artifact_sha256"), meta.get("sha256")):
            raise ArtifactRejected(f"{SIDECAR_NAME} of {version!r} was not compiled from this version's artifact")
        return record

    def read_compiled(self, version: str) -> tuple[bytes, dict[str, Any]] | None:
        """A version's compiled form (bytes) and record, once its bytes hash to the record's
        sha256 and, with a signing key, carry a valid signature; None when the version has
        no compiled form (published before compiled inference, or its pipeline could not be)."""
        record = self.compiled_record(version)
        if record is None or not record.get("file"):
            return None
        name = str(record["file"])
        if name != "model.onnx":
            raise ArtifactRejected(f"compiled form of {version!r} names an unknown file {name[:40]!r}")
        try:
            raw = (self._version_dir(version) / name).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactRejected(f"{name} of {version!r} is missing") from exc
        if not same(hashlib.sha256(raw).hexdigest(), record.get("sha256")):
            raise ArtifactRejected(f"{name} of {version!r} does not match the sha256 in its compiled record")
        if self.signing_key is not None and not same(sign_bytes(raw, self.signing_key), record.get("signature")):
            raise ArtifactRejected(f"{name} of {version!r} has no valid signature: it was not written by a "
                                   "trainer holding this MODEL_SIGNING_KEY")
        return raw, record

    def sign(self, raw: bytes) -> str | None:
        """The signature this store's key gives ``raw`` (None without a key)."""
        return sign_bytes(raw, self.signing_key)

    # --- writing (trainer only) --------------------------------------------
    def write_version(
        self,
        version: str,
        dump: Callable[[Path], None],
        meta: dict[str, Any],
        documents: dict[str, bytes] | None = None,
    ) -> dict[str, Any]:
        """Write a complete version atomically and return its final metadata.

        ``dump(path)`` writes the artifact; the store hashes it, adds
        ``sha256`` and ``version`` to ``meta``, fsyncs every file and renames
        the directory into place. Nothing is visible under ``versions/``
        until the rename. ``documents``: files written beside the artifact
        (names from ``DOCUMENTS``), each hashed into meta.json's ``files``.
        """
        documents = documents or {}
        unknown = set(documents) - set(DOCUMENTS)
        if unknown:
            raise ValueError(f"not a version document: {sorted(unknown)}")
        final = self._version_dir(version)
        with new_directory(final) as tmp:
            write_durably(tmp / ARTIFACT_NAME, dump)
            digests = digest_file(tmp / ARTIFACT_NAME, self.signing_key)
            for name, raw in documents.items():
                write_new_file(tmp / name, raw)
            files = {name: hashlib.sha256(raw).hexdigest() for name, raw in sorted(documents.items())}
            meta = {**meta, "version": version, "sha256": digests.sha256, "signature": digests.signature,
                    **({"files": files} if files else {})}
            write_new_file(tmp / META_NAME, json.dumps(meta, indent=2, sort_keys=True).encode())
        return meta

    def add_compiled(self, version: str, raw: bytes | None, record: dict[str, Any]) -> dict[str, Any]:
        """Give a stored version without a compiled form one (``tpotserve compile``): model.onnx
        (when ``raw``) and compiled.json, which names the artifact sha256 it was compiled from.
        The version's meta.json and artifact are not touched, so its sha256, signature and
        pointer stay valid; the record's own sha256 and signature cover model.onnx. Each file is
        written to a temp name, fsynced and renamed: a reader sees all of it or none (compiled.json,
        which the API looks for, is renamed last)."""
        meta = self.read_meta(version)
        if self.compiled_record(version) is not None:
            raise Conflict(f"model version {version!r} already has a compiled form (or a recorded reason)")
        directory = self._version_dir(version)
        record = {**record, "artifact_sha256": meta["sha256"]}
        if raw is not None:
            record.update(file="model.onnx", sha256=hashlib.sha256(raw).hexdigest(), signature=self.sign(raw))
            replace_file(directory / "model.onnx", raw)
        else:
            record["file"] = None
        replace_file(directory / SIDECAR_NAME, json.dumps(record, indent=2, sort_keys=True).encode())
        return record

    @contextmanager
    def publishing(self, wait_s: float = PUBLISH_WAIT_S) -> Iterator[None]:
        """One publisher at a time: "gate, write, point current.json, prune" in a training,
        ``set_current`` in an activate (rollback). Without it a prune could delete the
        version an activate is pointing at.

        ``flock`` on a file in the store: it holds across processes and containers that
        share the volume (on NFS Linux maps it to a POSIX lock), between two opens in one
        process too, and the kernel drops it when its holder dies: a publisher killed
        mid-way never blocks the next one. Readers never
        need it (see the module docstring). Conflict after ``wait_s``.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # held by another open of the file
                    if time.monotonic() >= deadline:
                        raise Conflict(
                            f"another publish held the model store for over {wait_s:g} s; nothing was changed"
                        ) from None
                    time.sleep(0.05)
            yield  # closing the descriptor releases the lock
        finally:
            os.close(fd)

    def set_current(self, version: str, reason: str = "activate", by: str = "request",
                    details: dict[str, Any] | None = None) -> Pointer:
        """Point current.json at a stored, verified version (publish and rollback), and log it
        in activations.jsonl with ``reason`` (publish, activate, promotion...) and who asked."""
        meta = self.read_meta(version)
        self.verified_artifact(version, meta["sha256"])
        old = self.read_pointer_quietly()
        previous = old.previous if old is not None and old.version == version else (old.version if old else None)
        body = {"version": version, "sha256": meta["sha256"], "previous": previous, "activated_at": utc_iso()}
        self.root.mkdir(parents=True, exist_ok=True)
        replace_file(self.pointer_path, json.dumps(body).encode())
        entry = {"at": body["activated_at"], "version": version, "from": old.version if old else None,
                 "reason": reason, "by": by, **({"details": details} if details else {})}
        self._append_activation(entry)
        return Pointer(version=version, sha256=meta["sha256"], previous=previous)

    def _append_activation(self, entry: dict[str, Any]) -> None:
        # One write of one line with O_APPEND: lines never interleave, and the publish lock
        # (held by every caller of set_current) orders them. Best effort after the pointer:
        # the log explains the pointer, it never decides it.
        try:
            fd = os.open(self.root / ACTIVATIONS_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    def activations(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest ``limit`` changes of the served version, newest first."""
        try:
            lines = (self.root / ACTIVATIONS_NAME).read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in reversed(lines[-limit:]):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash mid-write
        return out

    # --- the model's documents outside its versions (policy, shadow) ----------
    def read_json(self, name: str) -> dict[str, Any] | None:
        """``policy.json`` or ``shadow.json``: None when absent (or unreadable: never a 500)."""
        try:
            data = json.loads((self.root / name).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_json(self, name: str, data: dict[str, Any] | None) -> None:
        """Replace (None: remove) ``policy.json`` or ``shadow.json``, crash-safe."""
        path = self.root / name
        if data is None:
            path.unlink(missing_ok=True)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        replace_file(path, json.dumps(data, indent=1).encode())

    def read_pointer_quietly(self) -> Pointer | None:
        """The pointer, or None when it is missing or unreadable."""
        try:
            return self.read_pointer()
        except ArtifactRejected:
            return None

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest versions beyond ``keep``; never the current one or the one before it."""
        pointer = self.read_pointer_quietly()
        protected = {pointer.version, pointer.previous} if pointer else set()
        names = self.list_version_ids()
        removable = [name for name in names if name not in protected]
        excess = len(names) - keep
        removed = []
        for name in removable[: max(excess, 0)]:
            # Rename first, so a reader never sees a half-deleted version under its name.
            doomed = self.versions_dir / f"{TMP_PREFIX}deleted-{name}"
            (self.versions_dir / name).rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(name)
        return removed

    def remove_stale_temp(self, older_than_s: float = 0.0) -> list[str]:
        """Delete temp leftovers of a writer that died mid-write; returns their names."""
        now = time.time()
        return [
            *remove_temp_leftovers(self.root, older_than_s, now),
            *remove_temp_leftovers(self.versions_dir, older_than_s, now),
        ]

    def _version_dir(self, version: str) -> Path:
        # A version id comes from URLs too: refuse anything that is not a plain name.
        if not version or len(version) > 100 or "/" in version or version.startswith(".") or "\x00" in version:
            raise NotFound(f"model version {version[:100]!r} does not exist", field="version")
        return self.versions_dir / version
