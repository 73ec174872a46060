"""Unit tests for tpotserve.store: the model volume (versions/ + current.json)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tpotserve.errors import ArtifactRejected, NotFound
from tpotserve.store import (
    ARTIFACT_NAME,
    META_NAME,
    POINTER_NAME,
    ModelStore,
    Pointer,
    new_version_id,
    sha256_file,
)

ARTIFACT_BYTES = b"not really a model, but bytes with a stable hash\n" * 64


def _dump_bytes(data: bytes = ARTIFACT_BYTES):
    def dump(path: Path) -> None:
        path.write_bytes(data)

    return dump


@pytest.fixture
def umask_022():
    """Pin the umask so mode assertions do not depend on the caller's shell."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def published(store: ModelStore) -> tuple[ModelStore, str]:
    """A store with one complete version that is current."""
    store.write_version("v1", _dump_bytes(), {"task": "classification"})
    store.set_current("v1")
    return store, "v1"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _temp_entries(store: ModelStore) -> list[str]:
    names = []
    for parent in (store.root, store.versions_dir):
        if parent.is_dir():
            names += [p.name for p in parent.iterdir() if p.name.startswith(".")]
    return names


# --- write + publish -------------------------------------------------------
def test_write_version_and_set_current_round_trip(store: ModelStore, umask_022) -> None:
    meta = store.write_version("20240101T000000Z-abcdef", _dump_bytes(), {"task": "classification", "cv_score": 0.9})

    version_dir = store.versions_dir / "20240101T000000Z-abcdef"
    artifact = version_dir / ARTIFACT_NAME
    meta_file = version_dir / META_NAME
    assert artifact.read_bytes() == ARTIFACT_BYTES
    assert meta["version"] == "20240101T000000Z-abcdef"
    assert meta["sha256"] == sha256_file(artifact)
    assert meta["task"] == "classification" and meta["cv_score"] == 0.9
    # What is on disk is what was returned.
    assert json.loads(meta_file.read_text()) == meta
    assert store.read_meta("20240101T000000Z-abcdef") == meta
    # Readable by an API that runs as another user.
    assert _mode(artifact) == 0o644
    assert _mode(meta_file) == 0o644

    assert store.read_pointer() is None  # writing a version does not publish it
    pointer = store.set_current("20240101T000000Z-abcdef")
    assert pointer == Pointer(version="20240101T000000Z-abcdef", sha256=meta["sha256"])
    body = json.loads((store.root / POINTER_NAME).read_text())
    assert body["version"] == "20240101T000000Z-abcdef"
    assert body["sha256"] == meta["sha256"]
    assert body["activated_at"].endswith("Z")
    assert _mode(store.root / POINTER_NAME) == 0o644
    assert store.read_pointer() == pointer
    assert store.verified_artifact("20240101T000000Z-abcdef", meta["sha256"]) == artifact
    assert _temp_entries(store) == []


def test_write_version_does_not_mutate_callers_meta(store: ModelStore) -> None:
    given = {"task": "regression"}
    store.write_version("v1", _dump_bytes(), given)
    assert given == {"task": "regression"}


def test_set_current_switches_between_versions(store: ModelStore) -> None:
    a = store.write_version("a", _dump_bytes(b"A"), {})
    b = store.write_version("b", _dump_bytes(b"B"), {})
    store.set_current("a")
    assert store.read_pointer() == Pointer("a", a["sha256"], previous=None)
    store.set_current("b")
    assert store.read_pointer() == Pointer("b", b["sha256"], previous="a")
    store.set_current("a")  # rollback
    assert store.read_pointer() == Pointer("a", a["sha256"], previous="b")
    store.set_current("a")  # activating the current version again keeps its "previous"
    assert store.read_pointer() == Pointer("a", a["sha256"], previous="b")
    assert _temp_entries(store) == []


def test_prune_keeps_the_newest_the_current_and_the_previous(store: ModelStore) -> None:
    for name in ("v1", "v2", "v3", "v4", "v5"):
        store.write_version(name, _dump_bytes(name.encode()), {})
    store.set_current("v2")
    store.set_current("v1")  # current v1, previous v2: both oldest, both protected
    removed = store.prune(keep=3)
    assert removed == ["v3", "v4"]
    assert sorted(m["version"] for m in store.list_versions()) == ["v1", "v2", "v5"]
    assert store.prune(keep=3) == []
    assert _temp_entries(store) == []


def test_read_pointer_is_none_on_an_empty_store(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "does-not-exist-yet")
    assert store.read_pointer() is None
    assert store.list_versions() == []


# --- verification ------------------------------------------------------------
def test_verified_artifact_rejects_a_truncated_file(published) -> None:
    store, version = published
    sha = store.read_meta(version)["sha256"]
    artifact = store.artifact_path(version)
    artifact.write_bytes(ARTIFACT_BYTES[:-10])
    with pytest.raises(ArtifactRejected) as info:
        store.verified_artifact(version, sha)
    assert version in info.value.message


def test_verified_artifact_rejects_a_modified_file_of_the_same_size(published) -> None:
    store, version = published
    sha = store.read_meta(version)["sha256"]
    artifact = store.artifact_path(version)
    data = bytearray(artifact.read_bytes())
    data[100] ^= 0x01
    artifact.write_bytes(bytes(data))
    assert artifact.stat().st_size == len(ARTIFACT_BYTES)
    with pytest.raises(ArtifactRejected):
        store.verified_artifact(version, sha)


def test_verified_artifact_rejects_a_wrong_expected_hash(published) -> None:
    store, version = published
    with pytest.raises(ArtifactRejected):
        store.verified_artifact(version, "0" * 64)
    with pytest.raises(ArtifactRejected):
        store.verified_artifact(version, "")


def test_verified_artifact_rejects_a_missing_file(published) -> None:
    store, version = published
    sha = store.read_meta(version)["sha256"]
    store.artifact_path(version).unlink()
    with pytest.raises(ArtifactRejected, match="missing"):
        store.verified_artifact(version, sha)


def test_set_current_refuses_a_version_whose_artifact_changed(published) -> None:
    store, _ = published
    store.write_version("v2", _dump_bytes(b"two"), {})
    store.artifact_path("v2").write_bytes(b"tampered")
    before = store.pointer_path.read_bytes()
    with pytest.raises(ArtifactRejected):
        store.set_current("v2")
    assert store.pointer_path.read_bytes() == before
    assert _temp_entries(store) == []


# --- failures while writing --------------------------------------------------
@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_failing_dump_leaves_nothing_behind(published, exc_type) -> None:
    store, _ = published
    pointer_before = store.pointer_path.read_bytes()
    versions_before = sorted(p.name for p in store.versions_dir.iterdir())

    def dump(path: Path) -> None:
        path.write_bytes(b"half a model")  # a partial write, then the failure
        raise exc_type("disk on fire")

    with pytest.raises(exc_type, match="disk on fire"):
        store.write_version("v2", dump, {})

    assert sorted(p.name for p in store.versions_dir.iterdir()) == versions_before
    assert not (store.versions_dir / "v2").exists()
    assert _temp_entries(store) == []
    assert store.pointer_path.read_bytes() == pointer_before
    assert [m["version"] for m in store.list_versions()] == ["v1"]


def test_failing_dump_on_a_fresh_store_creates_no_version(store: ModelStore) -> None:
    def dump(path: Path) -> None:
        raise ValueError("cannot pickle")

    with pytest.raises(ValueError):
        store.write_version("v1", dump, {})
    assert list(store.versions_dir.iterdir()) == []
    assert not store.pointer_path.exists()


def test_writing_an_existing_version_again_fails_and_keeps_the_original(published) -> None:
    store, version = published
    original = store.read_meta(version)
    with pytest.raises(OSError):
        store.write_version(version, _dump_bytes(b"different"), {})
    assert store.read_meta(version) == original
    assert store.artifact_path(version).read_bytes() == ARTIFACT_BYTES
    assert _temp_entries(store) == []


# --- listing -----------------------------------------------------------------
def test_list_versions_skips_temp_and_incomplete_directories(store: ModelStore) -> None:
    store.write_version("20240102T000000Z-bbbbbb", _dump_bytes(b"b"), {"n": 2})
    store.write_version("20240101T000000Z-aaaaaa", _dump_bytes(b"a"), {"n": 1})
    # A writer that died before its rename: complete-looking, but dot-prefixed.
    temp = store.versions_dir / ".tmp-20240103T000000Z-cccccc-0000"
    temp.mkdir()
    (temp / META_NAME).write_text(json.dumps({"version": "temp"}))
    # A directory without meta.json.
    (store.versions_dir / "no-meta").mkdir()
    # A directory whose meta.json is garbage.
    bad = store.versions_dir / "bad-meta"
    bad.mkdir()
    (bad / META_NAME).write_text("{not json")
    # A stray file.
    (store.versions_dir / "README").write_text("hello")

    listed = store.list_versions()
    assert [m["version"] for m in listed] == ["20240101T000000Z-aaaaaa", "20240102T000000Z-bbbbbb"]
    assert [m["n"] for m in listed] == [1, 2]


def test_read_meta_of_garbage_is_rejected_not_crashing(store: ModelStore) -> None:
    bad = store.versions_dir / "bad"
    bad.mkdir(parents=True)
    (bad / META_NAME).write_bytes(b"\xff\xfe not json")
    with pytest.raises(ArtifactRejected):
        store.read_meta("bad")


# --- unknown and hostile version ids ----------------------------------------
def test_set_current_on_a_missing_version_raises_not_found(published) -> None:
    store, _ = published
    before = store.pointer_path.read_bytes()
    with pytest.raises(NotFound) as info:
        store.set_current("nope")
    assert info.value.field == "version"
    assert store.pointer_path.read_bytes() == before


def test_set_current_on_an_empty_store_does_not_create_a_pointer(store: ModelStore) -> None:
    with pytest.raises(NotFound):
        store.set_current("nope")
    assert store.read_pointer() is None


@pytest.mark.parametrize("version", ["", ".", "..", ".tmp-v1", "../v1", "a/b", "v1/", "/etc", "v1\x00"])
def test_hostile_version_ids_raise_not_found(published, version: str) -> None:
    store, _ = published
    with pytest.raises(NotFound):
        store.read_meta(version)
    with pytest.raises(NotFound):
        store.artifact_path(version)
    with pytest.raises(NotFound):
        store.set_current(version)
    with pytest.raises(NotFound):
        store.write_version(version, _dump_bytes(), {})
    assert store.read_pointer().version == "v1"
    assert _temp_entries(store) == []


def test_dot_version_does_not_reach_a_temp_dir(store: ModelStore) -> None:
    # A complete-looking temp dir must not be activatable by naming it.
    temp = store.versions_dir / ".tmp-x"
    temp.mkdir(parents=True)
    (temp / ARTIFACT_NAME).write_bytes(b"x")
    (temp / META_NAME).write_text(json.dumps({"sha256": sha256_file(temp / ARTIFACT_NAME)}))
    with pytest.raises(NotFound):
        store.set_current(".tmp-x")
    assert store.read_pointer() is None


# --- crash leftovers ---------------------------------------------------------
def test_remove_stale_temp_removes_only_temp_entries(published) -> None:
    store, version = published
    stale_dir = store.versions_dir / ".tmp-v9-deadbeef"
    stale_dir.mkdir()
    (stale_dir / ARTIFACT_NAME).write_bytes(b"half")
    stale_pointer = store.root / ".tmp-current.json-cafebabe"
    stale_pointer.write_text("{}")
    other_dot = store.versions_dir / ".keep"
    other_dot.mkdir()

    removed = store.remove_stale_temp()

    assert sorted(removed) == [".tmp-current.json-cafebabe", ".tmp-v9-deadbeef"]
    assert not stale_dir.exists() and not stale_pointer.exists()
    assert other_dot.exists()
    assert store.read_pointer().version == version
    assert [m["version"] for m in store.list_versions()] == [version]
    assert store.remove_stale_temp() == []


def test_remove_stale_temp_keeps_fresh_entries_younger_than_the_limit(published) -> None:
    store, _ = published
    fresh = store.versions_dir / ".tmp-fresh"
    fresh.mkdir()
    old = store.versions_dir / ".tmp-old"
    old.mkdir()
    an_hour_ago = os.path.getmtime(old) - 7200
    os.utime(old, (an_hour_ago, an_hour_ago))

    removed = store.remove_stale_temp(older_than_s=3600)

    assert removed == [".tmp-old"]
    assert fresh.exists() and not old.exists()


def test_remove_stale_temp_on_a_missing_root_is_a_no_op(tmp_path: Path) -> None:
    assert ModelStore(tmp_path / "absent").remove_stale_temp() == []


# --- the pointer file --------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[]", b'"a string"', b"42", b'{"version": "v1"}', b'{"sha256": "ab"}', b"\xff\xfe\x00"],
)
def test_read_pointer_on_garbage_raises_artifact_rejected(store: ModelStore, raw: bytes) -> None:
    store.root.mkdir(parents=True)
    store.pointer_path.write_bytes(raw)
    with pytest.raises(ArtifactRejected):
        store.read_pointer()


def test_new_version_ids_are_unique_and_sort_by_time() -> None:
    ids = {new_version_id() for _ in range(50)}
    assert len(ids) == 50
    for vid in ids:
        stamp, _, suffix = vid.partition("-")
        assert len(stamp) == 16 and stamp.endswith("Z") and stamp[8] == "T"
        assert len(suffix) == 6 and int(suffix, 16) >= 0


# --- findings: see the report; these fail against the current code ----------
def test_published_files_are_world_readable_under_a_restrictive_umask(store: ModelStore) -> None:
    old = os.umask(0o077)
    try:
        store.write_version("v1", _dump_bytes(), {})
        store.set_current("v1")
    finally:
        os.umask(old)
    assert _mode(store.artifact_path("v1")) == 0o644
    assert _mode(store.versions_dir / "v1") == 0o755
    assert _mode(store.versions_dir / "v1" / META_NAME) == 0o644
    assert _mode(store.pointer_path) == 0o644


def test_verified_artifact_rejects_a_non_ascii_expected_hash(published) -> None:
    store, version = published
    with pytest.raises(ArtifactRejected):
        store.verified_artifact(version, "é" * 64)
