"""Unit tests for named models: the registry on the model volume (layout, names, the move
of a single-model volume under the default name, crash resume), and the API's pool of
holders (lazy loading, LRU bound, one model's bad artifact never touching another).

Real files in tmp_path, versions written and signed exactly as the trainer writes them
(ModelStore.write_version + set_current over a small scikit-learn pipeline on iris).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tests.unit.test_api import SIGNING_KEY, make_meta, publish, write_pointer
from tpotserve.errors import InvalidInput, ModelNotReady, NotFound
from tpotserve.registry import ModelRegistry, check_model_name
from tpotserve.store import ModelStore
from tpotserve_api.model_holder import ModelHolder
from tpotserve_api.model_pool import ModelPool

KEY = SIGNING_KEY.encode()
DEFAULT = "iris"


@pytest.fixture(scope="module")
def fitted() -> tuple[Pipeline, np.ndarray]:
    bunch = load_iris()
    X = np.asarray(bunch.data, dtype=float)
    y = np.array([str(bunch.target_names[i]) for i in bunch.target])
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))]).fit(X, y)
    return model, X


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "volume"


@pytest.fixture
def registry(root: Path) -> ModelRegistry:
    return ModelRegistry(root, KEY, DEFAULT)


@pytest.fixture
def put(fitted):
    """put(store, version, activate=True): one signed version, as the trainer writes it."""
    model, X = fitted

    def put(store: ModelStore, version: str, activate: bool = True) -> dict:
        return publish(store, version, model, make_meta(model, X), activate=activate)

    return put


def legacy_volume(root: Path, put) -> ModelStore:
    """The single-model layout: root/versions/{v1,v2,v3}, root/current.json on v2."""
    legacy = ModelStore(root, KEY)
    put(legacy, "v1")
    put(legacy, "v2")
    put(legacy, "v3", activate=False)
    assert legacy.read_pointer().version == "v2"
    return legacy


def serving(registry: ModelRegistry, put, *names: str) -> None:
    """Each name gets a signed v1 that its pointer names."""
    for name in names:
        put(registry.store(name), "v1")


# --- migration ---------------------------------------------------------------------
def test_migrate_legacy_moves_every_version_and_keeps_the_pointer(root, registry, put) -> None:
    legacy = legacy_volume(root, put)
    pointer_bytes = legacy.pointer_path.read_bytes()
    log_bytes = (root / "activations.jsonl").read_bytes()
    (root / "policy.json").write_text('{"policy": {}}')
    pointer = legacy.read_pointer()
    assert pointer.previous == "v1"

    # Before the move the default model is read from the old place, and served.
    assert registry.store().root == root
    assert registry.store(DEFAULT).root == root
    assert registry.names() == [DEFAULT]
    holder = ModelHolder(registry, DEFAULT)
    assert holder.refresh() is True
    before = holder.current()
    assert before.version == "v2"

    moved = registry.migrate_legacy()

    assert moved == ["current.json", "activations.jsonl", "policy.json", "v1", "v2", "v3"]
    target = root / "models" / DEFAULT
    assert (target / "activations.jsonl").read_bytes() == log_bytes  # the model's history moves with it
    assert (target / "policy.json").read_text() == '{"policy": {}}' and not (root / "policy.json").exists()
    assert sorted(p.name for p in (target / "versions").iterdir()) == ["v1", "v2", "v3"]
    assert (target / "current.json").read_bytes() == pointer_bytes
    assert not (root / "versions").exists()
    assert not (root / "current.json").exists()
    assert not any(p.name.startswith(".migrating-") for p in (root / "models").iterdir())

    store = registry.store(DEFAULT)
    assert store.root == target
    assert store.read_pointer() == pointer  # version, sha256 and previous
    assert store.list_version_ids() == ["v1", "v2", "v3"]
    for version in ("v1", "v2", "v3"):
        assert store.verified_artifact(version, store.read_meta(version)["sha256"]).is_file()
    assert registry.names() == [DEFAULT]

    assert registry.migrate_legacy() == []  # a second call is a no-op
    assert store.read_pointer() == pointer

    # The same holder follows the moved store without reloading.
    assert holder.refresh() is False
    assert holder.current() is before
    assert holder.status()["last_load_error"] is None


def test_migrate_on_a_volume_without_a_legacy_store_does_nothing(root, registry, put) -> None:
    assert registry.migrate_legacy() == []
    assert not (root / "models").exists()
    serving(registry, put, DEFAULT)
    pointer_bytes = registry.store().pointer_path.read_bytes()
    assert registry.migrate_legacy() == []
    assert registry.store().pointer_path.read_bytes() == pointer_bytes


def test_migrate_resumes_after_a_crash_once_the_pointer_moved(root, registry, put) -> None:
    legacy = legacy_volume(root, put)
    pointer_bytes = legacy.pointer_path.read_bytes()
    holder = ModelHolder(registry, DEFAULT)
    assert holder.refresh() is True
    before = holder.current()

    # First step by hand: the pointer left the old place for the staging dir; then a crash.
    staging = root / "models" / f".migrating-{DEFAULT}"
    staging.mkdir(parents=True)
    os.replace(root / "current.json", staging / "current.json")

    # Meanwhile the API still reads the old place, sees no pointer and keeps serving.
    assert registry.store().root == root
    assert registry.store().read_pointer() is None
    assert registry.names() == [DEFAULT]
    assert holder.refresh() is False
    assert holder.current() is before

    moved = registry.migrate_legacy()

    assert moved == ["activations.jsonl", "v1", "v2", "v3"]
    target = root / "models" / DEFAULT
    assert not staging.exists()
    assert not (root / "versions").exists()
    assert (target / "current.json").read_bytes() == pointer_bytes
    store = registry.store()
    assert store.root == target
    assert store.list_version_ids() == ["v1", "v2", "v3"]
    for version in ("v1", "v2", "v3"):
        assert store.verified_artifact(version, store.read_meta(version)["sha256"]).is_file()
    assert holder.refresh() is False
    assert holder.current() is before
    assert registry.migrate_legacy() == []


def test_migrate_resumes_a_complete_staging_dir_left_unrenamed(root, registry, put) -> None:
    legacy = legacy_volume(root, put)
    pointer = legacy.read_pointer()
    staging = root / "models" / f".migrating-{DEFAULT}"
    staging.mkdir(parents=True)
    os.replace(root / "current.json", staging / "current.json")
    (root / "versions").rename(staging / "versions")  # crash before the final rename

    registry.migrate_legacy()

    assert not staging.exists()
    store = registry.store()
    assert store.root == root / "models" / DEFAULT
    assert store.read_pointer() == pointer
    assert store.list_version_ids() == ["v1", "v2", "v3"]


def test_migrate_merges_a_legacy_store_that_reappears(root, registry, put) -> None:
    legacy = legacy_volume(root, put)
    registry.migrate_legacy()
    store = registry.store()
    kept_bytes = store.pointer_path.read_bytes()
    kept = store.read_pointer()

    # Something on the old layout writes the old place again: one more version, a pointer on it.
    put(legacy, "v4")
    old_pointer_bytes = legacy.pointer_path.read_bytes()
    assert legacy.read_pointer().version == "v4"
    assert registry.store().root == store.root  # the migrated store wins for readers

    moved = registry.migrate_legacy()

    assert moved == ["current.json", "activations.jsonl", "v4"]
    assert store.activations()[0]["version"] == "v4"  # the old place's activation joins the log
    assert store.list_version_ids() == ["v1", "v2", "v3", "v4"]
    assert store.pointer_path.read_bytes() == kept_bytes  # the existing pointer wins
    assert store.read_pointer() == kept
    assert (store.root / "current.json.legacy").read_bytes() == old_pointer_bytes
    assert not (root / "versions").exists()
    assert not (root / "current.json").exists()
    assert store.verified_artifact("v4", store.read_meta("v4")["sha256"]).is_file()
    assert registry.migrate_legacy() == []


def test_migrate_never_overwrites_a_version_already_moved(root, registry, put, fitted) -> None:
    legacy = legacy_volume(root, put)
    registry.migrate_legacy()
    store = registry.store()
    v2_meta = (store.versions_dir / "v2" / "meta.json").read_bytes()
    # The old place holds a v2 again (different bytes) and a new v5.
    put(legacy, "v2", activate=False)
    (legacy.versions_dir / "v2" / "meta.json").write_text("{}")
    put(legacy, "v5", activate=False)

    moved = registry.migrate_legacy()

    assert moved == ["v5"]
    assert (store.versions_dir / "v2" / "meta.json").read_bytes() == v2_meta
    assert store.list_version_ids() == ["v1", "v2", "v3", "v5"]


# --- names -------------------------------------------------------------------------
def test_names_default_first_then_sorted_skipping_what_is_no_model(root, registry, put) -> None:
    models = root / "models"
    serving(registry, put, "zeta", "alpha", DEFAULT)
    (models / "beta" / "versions").mkdir(parents=True)  # versions, no pointer yet: a model
    (models / "ptr-only").mkdir()
    (models / "ptr-only" / "current.json").write_text("{}")  # a pointer alone: a model
    (models / ".hidden" / "versions").mkdir(parents=True)
    (models / ".migrating-other" / "versions").mkdir(parents=True)
    (models / "empty").mkdir()
    (models / "lockonly").mkdir()
    (models / "lockonly" / ".publish.lock").write_text("")
    (models / "current" / "versions").mkdir(parents=True)  # reserved
    (models / "bad name" / "versions").mkdir(parents=True)
    (models / ("x" * 65) / "versions").mkdir(parents=True)
    (models / "afile").write_text("not a dir")

    assert registry.names() == [DEFAULT, "alpha", "beta", "ptr-only", "zeta"]
    other_default = ModelRegistry(root, KEY, "zeta")
    assert other_default.names() == ["zeta", "alpha", "beta", DEFAULT, "ptr-only"]
    absent_default = ModelRegistry(root, KEY, "nope")
    assert absent_default.names() == ["alpha", "beta", DEFAULT, "ptr-only", "zeta"]


def test_names_on_an_empty_volume(registry) -> None:
    assert registry.names() == []


@pytest.mark.parametrize("bad", ["current", "", "../x", ".hidden", "a" * 65, "a/b", "-x", "a b", "é"])
def test_check_model_name_refuses(bad: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_model_name(bad)
    assert caught.value.field == "model"


@pytest.mark.parametrize("bad", [None, 5, b"iris", ["iris"]])
def test_check_model_name_refuses_non_strings(bad: object) -> None:
    with pytest.raises(InvalidInput):
        check_model_name(bad, field="name")


@pytest.mark.parametrize("good", ["iris", "house-prices_2.v1", "A", "9lives", "a" * 64])
def test_check_model_name_accepts(good: str) -> None:
    assert check_model_name(good) == good


def test_registry_refuses_a_bad_default_or_store_name(root, registry) -> None:
    with pytest.raises(InvalidInput) as caught:
        ModelRegistry(root, KEY, "current")
    assert caught.value.field == "MODEL_NAME"
    with pytest.raises(InvalidInput):
        registry.store("../escape")


def test_existing_store_raises_not_found_for_an_unknown_name(root, registry, put) -> None:
    with pytest.raises(NotFound) as caught:
        registry.existing_store("unknown")
    assert "unknown" in str(caught.value)
    with pytest.raises(NotFound):
        registry.existing_store()  # the default model, not trained yet
    (root / "models" / "bare").mkdir(parents=True)  # a directory alone is no model
    with pytest.raises(NotFound):
        registry.existing_store("bare")
    serving(registry, put, "known")
    assert registry.existing_store("known").root == root / "models" / "known"


# --- the holder --------------------------------------------------------------------
def test_holder_without_a_model_is_not_ready(registry) -> None:
    default, other = ModelHolder(registry, DEFAULT), ModelHolder(registry, "other")
    for holder in (default, other):
        assert holder.refresh() is False
        assert holder.status()["model_loaded"] is False
    with pytest.raises(ModelNotReady, match="no model is loaded yet"):
        default.current()
    with pytest.raises(ModelNotReady, match="'other'"):
        other.current()


def test_holder_follows_its_own_pointer(registry, put) -> None:
    serving(registry, put, DEFAULT, "b")
    holder = ModelHolder(registry, "b")
    assert holder.refresh() is True
    assert holder.current().version == "v1"
    assert holder.current().name == "b"
    assert holder.refresh() is False  # same pointer: no reload
    put(registry.store(DEFAULT), "v2")  # another model's publish
    assert holder.refresh() is False
    put(registry.store("b"), "v2")
    assert holder.refresh() is True
    assert holder.current().version == "v2"


# --- the pool ----------------------------------------------------------------------
def test_pool_loads_the_default_at_start_and_others_on_request(registry, put) -> None:
    serving(registry, put, DEFAULT, "b")
    pool = ModelPool(registry, poll_interval_s=60, max_loaded=16)
    assert list(pool.status()) == [DEFAULT]
    assert pool.get().version == "v1"
    assert pool.get(DEFAULT) is pool.get()
    assert "b" not in pool.status()

    b = pool.get("b")

    assert b.name == "b" and b.version == "v1"
    assert set(pool.status()) == {DEFAULT, "b"}
    assert pool.status()["b"]["model_loaded"] is True
    assert pool.get("b") is b  # held: not loaded again


def test_pool_drops_the_least_recently_used_other_model(registry, put) -> None:
    serving(registry, put, DEFAULT, "b", "c", "d")
    pool = ModelPool(registry, poll_interval_s=60, max_loaded=3)  # the default and two others
    default = pool.get()
    b = pool.get("b")
    c = pool.get("c")
    assert list(pool.status()) == [DEFAULT, "b", "c"]
    assert pool.get("b") is b  # b is now more recently used than c

    assert pool.get("d").version == "v1"

    assert list(pool.status()) == [DEFAULT, "b", "d"]  # c, the least recently used, dropped
    assert "c" not in pool.status()
    assert pool.get() is default

    again = pool.get("c")  # the dropped one is loaded again on request

    assert again.version == "v1" and again is not c
    assert list(pool.status()) == [DEFAULT, "d", "c"]
    assert pool.get() is default


def test_pool_never_drops_the_default_model(registry, put) -> None:
    serving(registry, put, DEFAULT, "b", "c")
    pool = ModelPool(registry, poll_interval_s=60, max_loaded=1)
    default = pool.get()
    assert pool.get("b").version == "v1"  # answered, though there is no room to keep it
    assert pool.get("c").version == "v1"
    assert list(pool.status()) == [DEFAULT]
    assert pool.get() is default


def test_pool_preload_fills_free_room_only(registry, put) -> None:
    serving(registry, put, DEFAULT, "b", "c", "d")
    pool = ModelPool(registry, poll_interval_s=60, max_loaded=3)
    pool.preload()
    assert list(pool.status()) == [DEFAULT, "b", "c"]
    assert all(entry["model_loaded"] for entry in pool.status().values())


def test_pool_unknown_and_unpublished_models(registry, put) -> None:
    serving(registry, put, DEFAULT)
    put(registry.store("draft"), "v1", activate=False)  # versions, no pointer
    pool = ModelPool(registry, poll_interval_s=60, max_loaded=16)

    with pytest.raises(NotFound):
        pool.get("nope")
    assert "nope" not in pool.status()
    with pytest.raises(InvalidInput):
        pool.get("../iris")
    with pytest.raises(ModelNotReady, match="'draft'"):
        pool.get("draft")
    assert pool.status()["draft"]["model_loaded"] is False

    registry.store("draft").set_current("v1")  # published later: the poll picks it up
    pool.refresh()
    assert pool.get("draft").version == "v1"


def test_pool_a_bad_artifact_of_one_model_leaves_the_others_alone(registry, put) -> None:
    serving(registry, put, DEFAULT, "b")
    pool = ModelPool(registry, poll_interval_s=60, max_loaded=16)
    default_v1, b_v1 = pool.get(), pool.get("b")
    b_store = registry.store("b")
    put(b_store, "v2", activate=False)
    write_pointer(b_store, "v2", "0" * 64)  # a pointer whose sha256 matches nothing

    pool.refresh()

    assert pool.get("b") is b_v1  # keeps serving its old version
    error = pool.status()["b"]["last_load_error"]
    assert error is not None and error["version"] == "v2" and "sha256" in error["message"]
    assert pool.get() is default_v1
    assert pool.status()[DEFAULT]["last_load_error"] is None

    put(registry.store(DEFAULT), "v2")  # a good new version of the default model
    pool.refresh()

    assert pool.get().version == "v2"
    assert pool.status()[DEFAULT]["last_load_error"] is None
    assert pool.get("b") is b_v1
    assert pool.status()["b"]["last_load_error"]["version"] == "v2"

    b_store.set_current("v1")  # the bad pointer undone: the error clears, nothing reloads
    pool.refresh()
    assert pool.get("b") is b_v1
    assert pool.status()["b"]["last_load_error"] is None


def test_pool_an_unreadable_pointer_of_one_model_leaves_the_others_alone(registry, put) -> None:
    serving(registry, put, DEFAULT, "b")
    pool = ModelPool(registry, poll_interval_s=60, max_loaded=16)
    b_v1 = pool.get("b")
    registry.store("b").pointer_path.write_text("not json")
    put(registry.store(DEFAULT), "v2")

    pool.refresh()

    assert pool.get("b") is b_v1
    assert "unreadable" in pool.status()["b"]["last_load_error"]["message"]
    assert pool.get().version == "v2"


def test_a_trailing_newline_is_not_a_model_name() -> None:
    with pytest.raises(InvalidInput):
        check_model_name("iris\n")
