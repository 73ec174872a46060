"""The archive format: its member names, the manifest's name and version, the size limits.

The archive (format version 3) is a gzip tar:

    models/models/<name>/versions/<version>/model.joblib   every complete version of every model,
    models/models/<name>/versions/<version>/meta.json      byte for byte
    models/models/<name>/versions/<version>/<document>     leaderboard.json, card.json, card.md: those
                                                           its meta.json lists under "files"
    datasets/<id>/data.csv, datasets/<id>/meta.json
    signing.key                         only with --signing-key-file, when the file exists
    models/models/<name>/activations.jsonl, policy.json, shadow.json
                                        each model's side files (those it has), byte for byte,
                                        as read right after its pointer
    models/models/<name>/current.json   each model's pointer, as read when its copy started
    manifest.json                       last: format, created_at, default_model, per model its
                                        pointer and its versions' sha256, every data set's sha256,
                                        every file's sha256

A format 1 archive (before named models: ``models/versions/<version>/...``,
``models/current.json``, one ``pointer`` and one ``versions`` list in the manifest) is
restored as the default model, into ``<model dir>/models/<default>/``. A format 2 archive
(before the side files) restores as it always did: it creates no side file.
"""

from __future__ import annotations

import re
from typing import Any

# The data set store's own names, from names.py (not datasets.py, which would pull in pandas).
from ..names import DATASET_DATA_NAME, DATASET_META_NAME
from ..registry import MODELS_DIR
from ..store import (
    ACTIVATIONS_NAME,
    ARTIFACT_NAME,
    DOCUMENTS,
    META_NAME,
    POINTER_NAME,
    POLICY_NAME,
    SHADOW_NAME,
)

FORMAT = "tpotserve-backup"
# 3: each model's side files (SIDE_FILES) beside its pointer. Bumped although a reader of 3
# reads 2 unchanged (a format 2 archive is one without them): a format 2 reader does not
# ignore member names it does not know, it refuses the archive (verify.check_member), so these
# archives are not format 2 to it. It refuses them at the first side file, before it reaches
# the manifest (last) and its number, with or without the bump; the number is for the
# manifest's readers: which tpotserve can restore this archive.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
"""1: one store at the archive's ``models/`` (before named models), restored as the default model.
2: named models, without their side files."""
SIDE_FILES_SINCE = 3
SIDE_FILES = (ACTIVATIONS_NAME, POLICY_NAME, SHADOW_NAME)
"""Each model's files beside current.json (tpotserve.store): its activation log, its retraining
policy, its version in shadow. Any of them may be absent."""
MANIFEST_NAME = "manifest.json"
KEY_MEMBER = "signing.key"
# Members read into memory (manifest, pointer, metadata, key) may not be larger.
SMALL_MEMBER_MAX_BYTES = 16 * 1024 * 1024
KEY_MODE = 0o600

_NAME = r"(?!\.)[^/\x00]{1,100}"  # a version, data set id or model name: a plain name (checked further)
MEMBER = re.compile(
    rf"(?P<manifest>{re.escape(MANIFEST_NAME)})"
    rf"|(?P<key>{re.escape(KEY_MEMBER)})"
    # A model's store: models/models/<name>/... (format 2) or models/... (format 1, no name).
    rf"|models/(?:{MODELS_DIR}/(?P<model>{_NAME})/)?"
    rf"(?:(?P<pointer>{re.escape(POINTER_NAME)})"
    rf"|(?P<side>{'|'.join(map(re.escape, SIDE_FILES))})"  # format 3 only: checked with the manifest
    rf"|versions/(?P<version>{_NAME})/(?P<vfile>{'|'.join(map(re.escape, (ARTIFACT_NAME, META_NAME, *DOCUMENTS)))}))"
    rf"|datasets/(?P<dataset>{_NAME})/"
    rf"(?P<dfile>{re.escape(DATASET_DATA_NAME)}|{re.escape(DATASET_META_NAME)})"
)
"""Every member name an archive may hold; its groups name the parts."""


def model_prefix(name: str | None) -> str:
    """Where a model's store is in an archive: ``models/models/<name>``; None: format 1's ``models``."""
    return "models" if name is None else f"models/{MODELS_DIR}/{name}"


def version_documents(meta: dict[str, Any]) -> dict[str, str]:
    """{name: sha256} of the documents a version's meta.json lists; TypeError when malformed."""
    files = meta.get("files") or {}
    if not isinstance(files, dict) or not all(
        name in DOCUMENTS and isinstance(sha, str) for name, sha in files.items()
    ):
        raise TypeError(f"files must map {', '.join(DOCUMENTS)} to sha256 strings")
    return files
