"""Behavioural tests for `indexer build` / `indexer info`: encoding, index layout, atomic publishing."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer import encode as encode_module
from indexer import encoding as encoding_module
from indexer.__main__ import main
from indexer.build import BuildOptions, build_index
from indexer.encode import encode_paths
from indexer.layout import (CURRENT, FAISS_FILE, MANIFEST, METADATA_FILE, IndexLayoutError,
                            resolve_version_dir, writer_lock)
from indexer.errors import IndexBuildError, IndexOpenError
from indexer.manifest import INDEX_FORMAT, INDEX_FORMAT_VERSION, CatalogSource
from indexer.store import open_index
from model import load_model, read_checkpoint_config

from .conftest import edit_manifest

VERSION_FILES = {FAISS_FILE, METADATA_FILE, MANIFEST}


# --------------------------------------------------------------------------- helpers


def _photo(path: Path, seed: int, size: int = 48) -> Path:
    """A small noisy RGB photo; the suffix picks the format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    arr = np.clip(base + rng.integers(-60, 60, size=(size, size, 3)), 0, 255).astype(np.uint8)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}[path.suffix.lower()]
    Image.fromarray(arr, "RGB").save(path, fmt)
    return path


def _folder(root: Path, names: list[str]) -> Path:
    for seed, name in enumerate(names):
        _photo(root / name, seed)
    return root


def _build(out: Path, ckpt: Path, **kwargs) -> Path:
    options = dict(model_spec=str(ckpt), device="cpu", workers=0, progress=False, batch_size=8)
    options.update(kwargs)
    return build_index(BuildOptions(out=out, **options))


def _versions(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.name.startswith("v-"))


def _staging(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.name.startswith(".staging-"))


def _copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    assert (dst / CURRENT).is_symlink()
    return dst


def _core_counts(counts: dict) -> dict:
    """The counts every manifest carries (newer builds may add more keys)."""
    return {k: counts.get(k) for k in ("photos_found", "vectors", "items", "skipped")}


def _sql(version_dir: Path, query: str, args=()):
    conn = sqlite3.connect(version_dir / METADATA_FILE)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


@pytest.fixture
def small_folder(tmp_path) -> Path:
    return _folder(tmp_path / "small", ["a.jpg", "b.png", "c.jpg", "d.jpg"])


# --------------------------------------------------------------------------- building


def test_build_from_folder_item_ids_are_stems(tmp_path, tiny_checkpoint):
    images = _folder(tmp_path / "shop", ["shop/100.jpg", "detail/100.png", "200.JPG", "sub/deep/300.webp",
                                         "400.bmp"])
    (images / "notes.txt").write_text("not a photo")
    out = tmp_path / "idx"

    version = _build(out, tiny_checkpoint, images=images)

    opened = open_index(out)
    assert opened.version_dir == version
    counts = opened.manifest.counts.to_dict()
    assert _core_counts(counts) == {"photos_found": 5, "vectors": 5, "items": 4, "skipped": 0}
    assert opened.faiss_index.ntotal == 5
    assert opened.metadata.count_items() == 4
    assert opened.manifest.catalog == CatalogSource(image_root=str(images.resolve()), csv=None)

    item = opened.metadata.item("100")
    assert item["image_count"] == 2
    assert sorted(item["images"]) == ["detail/100.png", "shop/100.jpg"]
    assert item["attributes"] == {}
    rows = _sql(version, "SELECT item_id, path FROM images ORDER BY vector_id")
    assert sorted(rows) == sorted([("100", "shop/100.jpg"), ("100", "detail/100.png"), ("200", "200.JPG"),
                                   ("300", "sub/deep/300.webp"), ("400", "400.bmp")])
    for _, stored in rows:
        assert opened.resolve_image_path(stored).is_file()


def test_build_from_csv_several_photos_per_item(tiny_index, synthetic_catalog, tiny_checkpoint):
    opened = open_index(tiny_index)
    manifest = opened.manifest

    assert manifest.counts.vectors == 24
    assert manifest.counts.items == 12
    assert manifest.counts.photos_found == 24
    assert manifest.counts.skipped == 0 and manifest.skipped == []
    assert manifest.catalog.csv == str(synthetic_catalog.resolve())
    assert manifest.catalog.image_root == str(synthetic_catalog.parent.resolve())
    assert opened.faiss_index.ntotal == 24 and opened.metadata.count_images() == 24

    with synthetic_catalog.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected_items = {r["item_id"]: {k: r[k] for k in ("category", "title", "colour", "pattern")} for r in rows}

    items = _sql(opened.version_dir, "SELECT item_id, attributes, image_count FROM items")
    assert len(items) == 12
    assert {item_id for item_id, _, _ in items} == set(expected_items)
    for item_id, attributes, image_count in items:
        assert image_count == 2
        assert json.loads(attributes) == expected_items[item_id]

    images = _sql(opened.version_dir, "SELECT vector_id, item_id, path, attributes FROM images ORDER BY vector_id")
    assert [v for v, *_ in images] == list(range(24))
    assert [(item_id, path) for _, item_id, path, _ in images] == [(r["item_id"], r["path"]) for r in rows]
    assert all(json.loads(a) == expected_items[i] for _, i, _, a in images)

    assert opened.metadata.items(["sku-0001", "nope"]) == {"sku-0001": expected_items["sku-0001"]}
    assert opened.metadata.item("sku-0003")["images"] == ["images/sku-0003_0.jpg", "images/sku-0003_1.jpg"]


def test_manifest_fields(tiny_index, tiny_checkpoint):
    version_dir = resolve_version_dir(tiny_index)
    manifest = json.loads((version_dir / MANIFEST).read_text(encoding="utf-8"))
    loaded = load_model(str(tiny_checkpoint))

    assert manifest["format"] == INDEX_FORMAT
    assert manifest["format_version"] == 1  # FAISS versions stay readable by releases before the store seam
    assert manifest["store"] == {"kind": "faiss"}
    assert manifest["model"]["spec"] == str(tiny_checkpoint.resolve())
    assert manifest["model"]["checksum"] == loaded.checksum
    assert len(manifest["model"]["checksum"]) == 64
    assert manifest["model"]["config"] == read_checkpoint_config(tiny_checkpoint).to_dict()
    assert manifest["model"]["config"]["backbone"] == "resnet18"
    assert manifest["dim"] == 32
    assert manifest["preprocessing"]["input_size"] == 64
    assert manifest["preprocessing"] == manifest["model"]["config"]["preprocessing"]
    assert manifest["metric"] == "inner_product"
    assert manifest["index_factory"] == "Flat"
    assert _core_counts(manifest["counts"]) == {"photos_found": 24, "vectors": 24, "items": 12, "skipped": 0}
    for key in ("wall_s", "decode_preprocess_s_total", "forward_s", "images_per_s", "index_s", "total_s"):
        assert isinstance(manifest["timings"][key], (int, float)) and manifest["timings"][key] >= 0, key
    assert manifest["timings"]["images_per_s"] > 0
    assert manifest["timings"]["total_s"] >= manifest["timings"]["wall_s"]
    assert manifest["environment"]["device"] == "cpu"
    built = dt.datetime.fromisoformat(manifest["built_at"])
    assert built.tzinfo is not None
    assert abs((dt.datetime.now(dt.timezone.utc) - built).total_seconds()) < 3600


def test_index_folder_layout(tiny_index):
    current = tiny_index / CURRENT
    assert current.is_symlink()
    target = os.readlink(current)
    assert not os.path.isabs(target), "a relative link keeps the index folder movable"
    assert target.startswith("v-")
    version_dir = current.resolve()
    assert version_dir.parent == tiny_index.resolve()
    assert {p.name for p in version_dir.iterdir()} == VERSION_FILES
    assert [p.name for p in _versions(tiny_index)] == [target]
    assert _staging(tiny_index) == []
    assert resolve_version_dir(tiny_index) == version_dir
    assert resolve_version_dir(version_dir) == version_dir
    # a version folder opens on its own as well
    assert open_index(version_dir).faiss_index.ntotal == 24


def test_moved_index_folder_still_opens(tmp_path, tiny_index):
    moved = _copy_index(tiny_index, tmp_path / "elsewhere" / "idx")
    opened = open_index(moved)
    assert opened.version_dir.parent == moved.resolve()
    assert opened.faiss_index.ntotal == 24


def test_corrupt_and_unreadable_files_are_skipped(tmp_path, tiny_checkpoint):
    images = _folder(tmp_path / "imgs", ["good1.jpg", "good2.png", "sub/good3.webp"])
    (images / "text.jpg").write_text("this is not a JPEG, just text renamed\n")
    (images / "empty.png").write_bytes(b"")
    truncated_src = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(truncated_src, "JPEG", quality=95)
    (images / "truncated.jpg").write_bytes(truncated_src.getvalue()[: len(truncated_src.getvalue()) // 3])
    os.symlink(tmp_path / "gone" / "dangling.jpg", images / "dangling.jpg")  # unreadable: target missing
    out = tmp_path / "idx"

    _build(out, tiny_checkpoint, images=images)

    opened = open_index(out)
    manifest = opened.manifest
    assert _core_counts(manifest.counts.to_dict()) == {"photos_found": 7, "vectors": 3, "items": 3, "skipped": 4}
    reasons = {Path(s["path"]).name: s["reason"] for s in manifest.skipped}
    assert set(reasons) == {"text.jpg", "empty.png", "truncated.jpg", "dangling.jpg"}
    assert all(reason.strip() for reason in reasons.values())
    assert "not an image" in reasons["text.jpg"]
    assert "not an image" in reasons["empty.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "cannot read" in reasons["dangling.jpg"]
    stored = sorted(p for (p,) in _sql(opened.version_dir, "SELECT path FROM images"))
    assert stored == ["good1.jpg", "good2.png", "sub/good3.webp"]


def test_build_where_nothing_decodes_raises_and_publishes_nothing(tmp_path, tiny_checkpoint):
    images = tmp_path / "bad"
    images.mkdir()
    (images / "a.jpg").write_text("text")
    (images / "b.png").write_bytes(b"")
    (images / "c.webp").write_bytes(b"RIFF\x00\x00")
    out = tmp_path / "idx"

    with pytest.raises(IndexBuildError) as info:
        _build(out, tiny_checkpoint, images=images)

    assert "none of the 3 photos" in str(info.value)
    assert "a.jpg" in str(info.value)
    assert not (out / CURRENT).exists() and not (out / CURRENT).is_symlink()
    if out.exists():
        assert _versions(out) == [] and _staging(out) == []
    with pytest.raises((IndexLayoutError, IndexOpenError)):
        open_index(out)


def test_build_with_no_photos_at_all_raises(tmp_path, tiny_checkpoint):
    images = tmp_path / "empty"
    images.mkdir()
    (images / "readme.txt").write_text("no photos here")
    with pytest.raises(IndexBuildError, match="no photos found"):
        _build(tmp_path / "idx", tiny_checkpoint, images=images)
    assert not (tmp_path / "idx" / CURRENT).is_symlink()


def test_build_without_images_or_catalog_raises(tmp_path, tiny_checkpoint):
    with pytest.raises(IndexBuildError, match="--images"):
        _build(tmp_path / "idx", tiny_checkpoint)


def test_csv_with_images_root(tmp_path, tiny_checkpoint):
    photos = _folder(tmp_path / "photos", ["x/1.jpg", "x/2.jpg", "y/3.png"])
    csv_path = tmp_path / "meta" / "catalog.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("path,item_id,colour\nx/1.jpg,A,red\nx/2.jpg,A,red\ny/3.png,B,blue\n", encoding="utf-8")
    out = tmp_path / "idx"

    _build(out, tiny_checkpoint, catalog=csv_path, images=photos)

    opened = open_index(out)
    assert opened.manifest.catalog.image_root == str(photos.resolve())
    assert opened.manifest.counts.items == 2
    assert opened.metadata.item("A") == {"item_id": "A", "attributes": {"colour": "red"}, "image_count": 2,
                                         "images": ["x/1.jpg", "x/2.jpg"]}
    assert opened.resolve_image_path("y/3.png") == photos.resolve() / "y" / "3.png"


# --------------------------------------------------------------------------- versions and publishing


def test_rebuild_replaces_current_and_keeps_one_previous_version(tmp_path, tiny_checkpoint, small_folder):
    out = tmp_path / "idx"
    published = []
    for _ in range(3):
        published.append(_build(out, tiny_checkpoint, images=small_folder))
        assert (out / CURRENT).resolve() == published[-1]
        time.sleep(0.01)

    assert len(set(published)) == 3
    versions = _versions(out)
    assert len(versions) == 2
    assert set(versions) == {published[1], published[2]}
    assert not published[0].exists()
    assert _staging(out) == []
    assert open_index(out).version_dir == published[2]
    assert open_index(published[1]).faiss_index.ntotal == 4  # the kept version is still complete


def test_failing_rebuild_leaves_previous_version_live(tmp_path, tiny_checkpoint, small_folder):
    out = tmp_path / "idx"
    first = _build(out, tiny_checkpoint, images=small_folder)
    before = open_index(out).faiss_index.ntotal
    link_before = os.readlink(out / CURRENT)

    with pytest.raises(IndexBuildError, match="IVF64"):
        _build(out, tiny_checkpoint, images=small_folder, index_factory="IVF64,Flat")

    assert os.readlink(out / CURRENT) == link_before
    assert _versions(out) == [first]
    opened = open_index(out)
    assert opened.version_dir == first
    assert opened.faiss_index.ntotal == before == 4
    assert opened.manifest.index_factory == "Flat"


def test_invalid_factory_fails_before_encoding(tmp_path, tiny_checkpoint, small_folder, monkeypatch):
    out = tmp_path / "idx"
    first = _build(out, tiny_checkpoint, images=small_folder)

    def must_not_encode(*args, **kwargs):
        raise AssertionError("encode_paths ran although the factory string is invalid")

    monkeypatch.setattr(encoding_module, "encode_paths", must_not_encode)
    started = time.perf_counter()
    with pytest.raises(IndexBuildError) as info:
        _build(out, tiny_checkpoint, images=small_folder, index_factory="NotAnIndex")
    elapsed = time.perf_counter() - started

    assert elapsed < 10
    message = str(info.value)
    assert "NotAnIndex" in message and "factory" in message
    assert "\n" not in message.strip()
    assert (out / CURRENT).resolve() == first
    assert _versions(out) == [first]
    assert _staging(out) == []
    assert open_index(out).faiss_index.ntotal == 4


def test_abandoned_staging_folders_are_removed(tmp_path, tiny_checkpoint, small_folder):
    out = tmp_path / "idx"
    _build(out, tiny_checkpoint, images=small_folder)
    # a dead writer's pid: a child that has exited and been reaped
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = [out / ".staging-999999-abc", out / f".staging-{child.pid}-def", out / ".staging-notapid"]
    for staging in dead:
        staging.mkdir()
        (staging / FAISS_FILE).write_bytes(b"half written")
    # A live writer would hold the folder's lock, so whoever gets the lock may remove them all.

    _build(out, tiny_checkpoint, images=small_folder)

    for staging in dead:
        assert not staging.exists(), staging
    assert open_index(out).faiss_index.ntotal == 4


def test_out_folder_with_unrelated_files_is_refused(tmp_path, tiny_checkpoint, small_folder):
    out = tmp_path / "documents"
    out.mkdir()
    (out / "thesis.docx").write_bytes(b"precious")
    (out / "photos").mkdir()
    (out / "photos" / "holiday.jpg").write_bytes(b"also precious")
    snapshot = {p.relative_to(out): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in out.rglob("*") if p.is_file()}

    with pytest.raises(IndexLayoutError, match="not a snap2shop index"):
        _build(out, tiny_checkpoint, images=small_folder)

    after = {p.relative_to(out): (p.read_bytes(), p.stat().st_mtime_ns)
             for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == snapshot
    assert not (out / CURRENT).exists()
    assert _versions(out) == [] and _staging(out) == []


def test_second_writer_is_refused(tmp_path, tiny_checkpoint, small_folder):
    out = tmp_path / "idx"
    first = _build(out, tiny_checkpoint, images=small_folder)

    with writer_lock(out):
        with pytest.raises(IndexLayoutError, match="another process"):
            _build(out, tiny_checkpoint, images=small_folder)
        assert (out / CURRENT).resolve() == first
        assert _versions(out) == [first]

    # once the first writer is done, building works again
    second = _build(out, tiny_checkpoint, images=small_folder)
    assert (out / CURRENT).resolve() == second != first


def test_reader_of_old_version_survives_a_rebuild(tmp_path, tiny_checkpoint, small_folder):
    out = tmp_path / "idx"
    _build(out, tiny_checkpoint, images=small_folder)
    reader = open_index(out)
    query = reader.faiss_index.reconstruct(0).reshape(1, -1)

    _build(out, tiny_checkpoint, images=small_folder)

    assert reader.version_dir.exists()
    scores, ids = reader.faiss_index.search(query, 1)
    assert ids[0, 0] == 0
    assert reader.metadata.count_images() == 4


# --------------------------------------------------------------------------- opening and validation


def test_open_index_detects_corrupt_faiss_file(tmp_path, tiny_index):
    idx = _copy_index(tiny_index, tmp_path / "idx")
    faiss_path = resolve_version_dir(idx) / FAISS_FILE
    faiss_path.write_bytes(b"\x00garbage, not a faiss index" * 10)
    with pytest.raises(IndexOpenError, match="corrupt"):
        open_index(idx)


def test_open_index_detects_missing_faiss_file(tmp_path, tiny_index):
    idx = _copy_index(tiny_index, tmp_path / "idx")
    (resolve_version_dir(idx) / FAISS_FILE).unlink()
    with pytest.raises(IndexOpenError, match="missing"):
        open_index(idx)


def test_open_index_detects_missing_metadata(tmp_path, tiny_index):
    idx = _copy_index(tiny_index, tmp_path / "idx")
    (resolve_version_dir(idx) / METADATA_FILE).unlink()
    with pytest.raises(IndexOpenError, match="missing"):
        open_index(idx)
    assert not (resolve_version_dir(idx) / METADATA_FILE).exists()  # opening read-only creates nothing


def test_open_index_detects_corrupt_metadata(tmp_path, tiny_index):
    idx = _copy_index(tiny_index, tmp_path / "idx")
    (resolve_version_dir(idx) / METADATA_FILE).write_bytes(b"not a sqlite database" * 100)
    with pytest.raises(IndexOpenError, match="corrupt"):
        open_index(idx)


@pytest.mark.parametrize("vectors", [23, 25, 0])
def test_open_index_detects_inconsistent_manifest_count(tmp_path, tiny_index, vectors):
    idx = _copy_index(tiny_index, tmp_path / "idx")
    edit_manifest(idx, lambda m: m["counts"].update(vectors=vectors))
    with pytest.raises(IndexOpenError, match="inconsistent"):
        open_index(idx)


def test_open_index_detects_metadata_row_count_mismatch(tmp_path, tiny_index):
    idx = _copy_index(tiny_index, tmp_path / "idx")
    db = resolve_version_dir(idx) / METADATA_FILE
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM images WHERE vector_id = 5")
    conn.commit()
    conn.close()
    with pytest.raises(IndexOpenError, match="23 rows in metadata"):
        open_index(idx)


def test_open_index_detects_dim_mismatch(tmp_path, tiny_index):
    idx = _copy_index(tiny_index, tmp_path / "idx")
    edit_manifest(idx, lambda m: m.update(dim=64))
    with pytest.raises(IndexOpenError, match="32-dim"):
        open_index(idx)


def test_open_index_rejects_bad_manifests(tmp_path, tiny_index):
    idx = _copy_index(tiny_index, tmp_path / "idx")
    manifest_path = resolve_version_dir(idx) / MANIFEST
    original = json.loads(manifest_path.read_text())

    manifest_path.write_text("{not json")
    with pytest.raises(IndexOpenError, match="not JSON"):
        open_index(idx)

    manifest_path.write_text(json.dumps(original | {"format": "something-else"}))
    with pytest.raises(IndexOpenError, match="not a snap2shop"):
        open_index(idx)

    manifest_path.write_text(json.dumps(original | {"format_version": INDEX_FORMAT_VERSION + 1}))
    with pytest.raises(IndexOpenError, match="newer"):
        open_index(idx)


def test_open_index_on_missing_or_foreign_folders(tmp_path):
    with pytest.raises(IndexLayoutError, match="does not exist"):
        open_index(tmp_path / "nope")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    with pytest.raises(IndexLayoutError, match="not a snap2shop index"):
        open_index(tmp_path / "foreign")
    (tmp_path / "dangling").mkdir()
    os.symlink("v-gone", tmp_path / "dangling" / CURRENT)
    with pytest.raises(IndexLayoutError):
        open_index(tmp_path / "dangling")


# --------------------------------------------------------------------------- vectors


def _stored_paths(opened) -> list[Path]:
    n = opened.faiss_index.ntotal
    by_id = opened.metadata.images_for_vectors(range(n))
    assert sorted(by_id) == list(range(n))
    return [opened.resolve_image_path(by_id[i][1]) for i in range(n)]


def test_vectors_are_unit_norm_and_reproducible(tiny_index, tiny_checkpoint):
    opened = open_index(tiny_index)
    n = opened.faiss_index.ntotal
    stored = opened.faiss_index.reconstruct_n(0, n)
    assert stored.shape == (24, 32) and stored.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
    assert np.abs(stored - stored[0]).max() > 1e-3, "distinct photos must not map to one vector"

    paths = _stored_paths(opened)
    again = encode_paths(paths, load_model(str(tiny_checkpoint)), batch_size=5, device="cpu",
                         workers=0, progress=False)
    assert again.failures == []
    assert again.ok_indices.tolist() == list(range(24))
    np.testing.assert_allclose(again.embeddings, stored, atol=1e-5)

    # each photo finds itself first; scores are cosine similarities
    scores, ids = opened.faiss_index.search(stored, 1)
    assert ids[:, 0].tolist() == list(range(24))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)


def test_encode_with_worker_processes_matches_in_process(tiny_checkpoint, synthetic_catalog, tmp_path):
    paths = sorted((synthetic_catalog.parent / "images").glob("*.jpg"))[:10]
    bad = tmp_path / "broken.jpg"
    bad.write_text("nope")
    paths.insert(3, bad)
    loaded = load_model(str(tiny_checkpoint))

    serial = encode_paths(paths, loaded, batch_size=4, device="cpu", workers=0, progress=False)
    parallel = encode_paths(paths, loaded, batch_size=4, device="cpu", workers=2, progress=False)

    expected_ok = [i for i in range(len(paths)) if i != 3]
    assert serial.ok_indices.tolist() == expected_ok
    assert parallel.ok_indices.tolist() == expected_ok
    assert [i for i, _ in serial.failures] == [i for i, _ in parallel.failures] == [3]
    np.testing.assert_allclose(parallel.embeddings, serial.embeddings, atol=1e-5)
    assert parallel.embeddings.shape == (10, 32)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
# auto is normal even with the model on the CPU: idle decoders starve beside any other busy job.
@pytest.mark.parametrize("priority, expected", [("auto", "SCHED_OTHER"), ("idle", "SCHED_IDLE"), ("normal", "SCHED_OTHER")])
def test_decoding_workers_yield_the_cpu_only_when_asked(tiny_checkpoint, synthetic_catalog, tmp_path,
                                                        monkeypatch, priority, expected):
    # Each worker notes its scheduling policy as it decodes: the DataLoader forks, so the patched
    # method runs in the workers, and the notes come back through files.
    notes = tmp_path / "policies"
    notes.mkdir()
    decode = encode_module.PhotoDataset.__getitem__

    def noting_policy(self, index):
        (notes / f"{os.getpid()}-{index}").write_text(str(os.sched_getscheduler(0)))
        return decode(self, index)

    monkeypatch.setattr(encode_module.PhotoDataset, "__getitem__", noting_policy)
    paths = sorted((synthetic_catalog.parent / "images").glob("*.jpg"))[:6]
    loaded = load_model(str(tiny_checkpoint))
    result = encode_paths(paths, loaded, batch_size=2, device="cpu", workers=2, progress=False,
                          decode_priority=priority)
    assert result.ok_indices.tolist() == list(range(6))
    policies = {int(note.read_text()) for note in notes.iterdir()}
    assert len(list(notes.iterdir())) == 6 and policies == {getattr(os, expected)}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the model's own process is untouched
    with pytest.raises(ValueError, match="decode_priority"):
        encode_paths(paths, loaded, workers=0, progress=False, decode_priority="low")


def test_encode_paths_all_bad_returns_empty(tiny_checkpoint, tmp_path):
    bad = [tmp_path / "a.jpg", tmp_path / "b.png"]
    for p in bad:
        p.write_bytes(b"")
    result = encode_paths(bad, load_model(str(tiny_checkpoint)), device="cpu", workers=0, progress=False)
    assert result.embeddings.shape == (0, 32)
    assert result.ok_indices.size == 0
    assert [i for i, _ in result.failures] == [0, 1]


def test_hnsw_factory_builds_and_searches(tmp_path, tiny_checkpoint):
    import faiss

    images = _folder(tmp_path / "imgs", [f"{i:02d}.jpg" for i in range(24)])
    out = tmp_path / "hnsw"
    _build(out, tiny_checkpoint, images=images, index_factory="HNSW32")

    opened = open_index(out)
    assert opened.manifest.index_factory == "HNSW32"
    assert isinstance(opened.faiss_index, faiss.IndexHNSW)
    assert opened.faiss_index.ntotal == 24
    assert opened.faiss_index.metric_type == faiss.METRIC_INNER_PRODUCT
    stored = opened.faiss_index.reconstruct_n(0, 24)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
    _, ids = opened.faiss_index.search(stored, 1)
    assert ids[:, 0].tolist() == list(range(24))


# --------------------------------------------------------------------------- CLI


def test_cli_build_and_info(tmp_path, tiny_checkpoint, capsys):
    images = _folder(tmp_path / "imgs", ["p1.jpg", "p2.jpg", "sub/p1.png", "p3.png"])
    (images / "broken.jpg").write_text("not a photo")
    out = tmp_path / "idx"

    rc = main(["build", "--images", str(images), "--out", str(out), "--model", str(tiny_checkpoint),
               "--workers", "0", "--device", "cpu", "--batch-size", "2", "--quiet"])

    assert rc == 0
    captured = capsys.readouterr()
    assert "indexed 4 photos of 3 items" in captured.out
    assert "skipped 1 photos" in captured.err and "broken.jpg" in captured.err
    assert (out / CURRENT).is_symlink()

    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    fields = {line.split(None, 1)[0]: line.split(None, 1)[1].strip() for line in info.splitlines() if line.strip()}
    assert fields["vectors"] == "4"
    assert fields["items"] == "3"
    assert fields["skipped"] == "1"
    assert fields["version"] == os.readlink(out / CURRENT)
    assert "32 dims" in fields["embedding"]

    assert main(["info", str(out), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["counts"]["vectors"] == 4 and manifest["dim"] == 32


def test_cli_info_on_missing_index(capsys):
    assert main(["info", "/nonexistent"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "/nonexistent" in lines[0]
    assert captured.out == ""


def test_cli_build_requires_images_or_catalog(tmp_path, capsys):
    out = tmp_path / "idx"
    with pytest.raises(SystemExit) as info:
        main(["build", "--out", str(out)])
    code = info.value.code
    assert code not in (0, None)
    assert "--images" in str(code) or "--images" in capsys.readouterr().err
    assert not out.exists()


def test_cli_build_requires_out(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["build", "--images", str(tmp_path)])
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_cli_build_errors_are_reported_not_raised(tmp_path, tiny_checkpoint, small_folder, capsys):
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    rc = main(["build", "--images", str(small_folder), "--out", str(out), "--model", str(tiny_checkpoint),
               "--workers", "0", "--device", "cpu", "--quiet"])

    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "not a snap2shop index" in err[-1]
    assert (out / "keep.txt").read_text() == "mine"

    rc = main(["build", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "new"),
               "--model", str(tiny_checkpoint), "--workers", "0", "--device", "cpu", "--quiet"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error:")


def test_failed_rebuild_in_the_same_process_leaves_no_staging_folder(tmp_path, tiny_checkpoint, small_folder):
    out = tmp_path / "idx"
    _build(out, tiny_checkpoint, images=small_folder)
    with pytest.raises(IndexBuildError):
        _build(out, tiny_checkpoint, images=small_folder, index_factory="IVF64,Flat")
    assert not list(out.glob(".staging-*"))
    assert open_index(out).faiss_index.ntotal == 4


def test_refused_out_folder_gets_no_lock_file(tmp_path, tiny_checkpoint, small_folder):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "x.txt").write_text("keep")
    with pytest.raises(IndexLayoutError):
        _build(out, tiny_checkpoint, images=small_folder)
    assert sorted(p.name for p in out.iterdir()) == ["x.txt"]
