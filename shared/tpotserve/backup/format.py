"""The archive format: its member names, the manifest's name and version, the size limits.

The archive (format version 4) is a gzip tar:

    models/models/<name>/versions/<version>/model.joblib   every complete version of every model,
    models/models/<name>/versions/<version>/meta.json      byte for byte
    models/models/<name>/versions/<version>/<document>     leaderboard.json, card.json, card.md, ...:
                                                           those its meta.json lists under "files"
    models/models/<name>/versions/<version>/compiled.json  a compiled form added later (tpotserve
                                                           compile), and the model.onnx it covers
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
(before the side files) restores as it always did: it creates no side file; neither a format
2 nor a format 3 one (before compiled.json) holds a compiled form added after publishing.
"""

from __future__ import annotations

import json
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
    SIDECAR_NAME,
)

FORMAT = "tpotserve-backup"
# 3: each model's side files (SIDE_FILES) beside its pointer. Bumped although a reader of 3
# reads 2 unchanged (a format 2 archive is one without them): a format 2 reader does not
# ignore member names it does not know, it refuses the archive (verify.check_member), so these
# archives are not format 2 to it. It refuses them at the first side file, before it reaches
# the manifest (last) and its number, with or without the bump; the number is for the
# manifest's readers: which tpotserve can restore this archive.
# 4: a version's compiled.json (a compiled form `tpotserve compile` added after publishing) and
# the model.onnx it covers; bumped for the same reason as 3 (a format 3 reader refuses the name).
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
"""1: one store at the archive's ``models/`` (before named models), restored as the default model.
2: named models, without their side files. 3: without compiled.json."""
SIDE_FILES_SINCE = 3
SIDECAR_SINCE = 4
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
    rf"|versions/(?P<version>{_NAME})/(?P<vfile>{'|'.join(map(re.escape, (ARTIFACT_NAME, META_NAME, *DOCUMENTS, SIDECAR_NAME)))}))"
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


def sidecar_documents(meta: dict[str, Any], raw: bytes) -> dict[str, str]:
    """{name: sha256} of the file a version's compiled.json covers (model.onnx; none when it
    records only why the version could not be compiled). ValueError unless it is a record
    compiled from this very version's artifact (``ModelStore.add_compiled``), for a version
    whose meta.json has no compiled form of its own."""
    if "compiled" in meta:
        raise ValueError(f"the version's {META_NAME} has a compiled form of its own")
    record = json.loads(raw)
    if not isinstance(record, dict) or record.get("artifact_sha256") != meta.get("sha256"):
        raise ValueError("it was not compiled from this version's artifact")
    name = record.get("file")
    if name is None:
        return {}
    if name != "model.onnx" or not isinstance(record.get("sha256"), str):
        raise ValueError(f"it names {str(name)[:40]!r} without a sha256; only model.onnx is a compiled form")
    return {name: record["sha256"]}
