"""`indexer add`, `indexer remove` and `indexer verify`: changing a published index without re-encoding it."""
from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest

from indexer import encoding as encoding_module
from indexer.__main__ import main
from indexer.add import AddOptions, add_photos
from indexer.encode import encode_paths
from indexer.layout import CURRENT, IndexLayoutError, resolve_version_dir
from indexer.remove import read_item_ids_file, remove_items
from indexer.store import open_index
from indexer.stores.faiss_vectors import enable_reconstruction
from indexer.verify import verify_index
from model import load_model

from .conftest import edit_manifest
from .test_indexer import _build, _copy_index, _folder, _photo, _sql, _staging, _versions

FACTORIES = ["Flat", "IVF4,Flat", "HNSW32"]


# --------------------------------------------------------------------------- helpers


def _add(index, **kwargs):
    options = dict(device="cpu", workers=0, progress=False, batch_size=8)
    options.update(kwargs)
    return add_photos(AddOptions(index=index, **options))


def _vectors_by_path(index_dir) -> dict[str, np.ndarray]:
    opened = open_index(index_dir)
    enable_reconstruction(opened.faiss_index)
    n = opened.faiss_index.ntotal
    paths = opened.metadata.images_for_vectors(range(n))
    vectors = opened.faiss_index.reconstruct_batch(np.arange(n, dtype=np.int64))
    return {paths[i][1]: vectors[i] for i in range(n)}


def _image_rows(index_dir) -> list[tuple]:
    return _sql(resolve_version_dir(index_dir), "SELECT vector_id, item_id, path FROM images ORDER BY vector_id")


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture(scope="module")
def factory_indexes(tmp_path_factory, tiny_checkpoint, synthetic_catalog):
    """One index of the synthetic catalogue per FAISS factory (copy before changing one)."""
    root = tmp_path_factory.mktemp("factories")
    return {factory: _build(root / factory.replace(",", "_"), tiny_checkpoint, catalog=synthetic_catalog,
                            index_factory=factory).parent
            for factory in FACTORIES}


# --------------------------------------------------------------------------- add


def test_add_folder_appends_vectors_and_leaves_the_rest_untouched(idx, new_folder, tiny_checkpoint):
    before_version = resolve_version_dir(idx)
    before = _vectors_by_path(idx)

    result = _add(idx, images=new_folder)

    assert result.version == resolve_version_dir(idx) != before_version
    assert (result.added_vectors, result.added_items, result.vectors, result.items) == (3, 3, 27, 15)
    assert result.already_indexed == [] and result.skipped == []
    opened = open_index(idx)
    assert opened.faiss_index.ntotal == 27 and opened.metadata.count_images() == 27
    assert opened.manifest.counts.vectors == 27 and opened.manifest.counts.items == 15
    rows = _image_rows(idx)
    assert [r[0] for r in rows] == list(range(27))
    # The new photos lie outside the catalogue root, so their stored paths are absolute.
    new_paths = [str(p.resolve()) for p in (new_folder / "new-1.jpg", new_folder / "new-2.png",
                                            new_folder / "sub" / "new-3.jpg")]
    assert [(r[1], r[2]) for r in rows[24:]] == [("new-1", new_paths[0]), ("new-2", new_paths[1]),
                                                  ("new-3", new_paths[2])]
    after = _vectors_by_path(idx)
    for path, vector in before.items():
        np.testing.assert_array_equal(after[path], vector)
    fresh = encode_paths([opened.resolve_image_path(p) for p in new_paths], load_model(str(tiny_checkpoint)),
                         device="cpu", workers=0, progress=False)
    np.testing.assert_allclose(np.stack([after[p] for p in new_paths]), fresh.embeddings, atol=1e-5)
    _, ids = opened.faiss_index.search(fresh.embeddings, 1)
    assert ids[:, 0].tolist() == [24, 25, 26]
    assert opened.resolve_image_path(new_paths[0]).is_file()
    assert verify_index(idx) == []
    # The replaced version stays for readers still on it, complete.
    assert open_index(before_version).faiss_index.ntotal == 24


def test_add_records_history_and_keeps_the_build_fields(idx, new_folder):
    built = open_index(idx).manifest

    _add(idx, images=new_folder)
    manifest = open_index(idx).manifest

    for key in ("model", "dim", "preprocessing", "metric", "index_factory", "catalog", "built_at",
                "format", "format_version", "timings", "environment"):
        assert getattr(manifest, key) == getattr(built, key), key
    assert dataclasses.replace(manifest.counts, vectors=24, items=12) == built.counts
    assert len(manifest.history) == 1
    entry = manifest.history[0]
    assert entry["operation"] == "add"
    assert entry["at"] == manifest.updated_at
    assert (entry["added_vectors"], entry["added_items"], entry["removed_vectors"], entry["removed_items"],
            entry["already_indexed"], entry["skipped"]) == (3, 3, 0, 0, 0, 0)
    assert (entry["vectors"], entry["items"]) == (27, 15)
    assert entry["source"] == {"images": str(new_folder.resolve()), "catalog": None}

    remove_items(idx, ["new-1"])
    history = open_index(idx).manifest.history
    assert [h["operation"] for h in history] == ["add", "remove"]
    assert (history[1]["removed_vectors"], history[1]["removed_items"], history[1]["vectors"]) == (1, 1, 26)


def test_add_csv_paths_relative_to_the_catalogue_root_and_item_attributes(tmp_path, tiny_checkpoint):
    shop = _folder(tmp_path / "shop", ["a1.jpg", "b1.jpg"])
    (shop / "catalog.csv").write_text("path,item_id,category\na1.jpg,A,dress\nb1.jpg,B,shoe\n")
    out = tmp_path / "idx"
    _build(out, tiny_checkpoint, catalog=shop / "catalog.csv")
    _photo(shop / "later" / "a2.jpg", seed=10)
    _photo(shop / "later" / "c1.jpg", seed=11)
    elsewhere = _photo(tmp_path / "elsewhere" / "c2.jpg", seed=12)
    additions = tmp_path / "additions.csv"
    additions.write_text("path,item_id,category\n"
                         f"{shop}/later/a2.jpg,A,WRONG\n"  # an existing item keeps its attributes
                         f"{shop}/later/c1.jpg,C,bag\n"
                         f"{elsewhere},C,bag\n")

    result = _add(out, catalog=additions)

    assert (result.added_vectors, result.added_items, result.vectors, result.items) == (3, 1, 5, 3)
    opened = open_index(out)
    assert opened.metadata.item("A") == {"item_id": "A", "attributes": {"category": "dress"}, "image_count": 2,
                                         "images": ["a1.jpg", "later/a2.jpg"]}
    assert opened.metadata.item("C") == {"item_id": "C", "attributes": {"category": "bag"}, "image_count": 2,
                                         "images": ["later/c1.jpg", str(elsewhere.resolve())]}
    # The category filter reads the photo rows, so the new photo of A is found under A's category.
    assert opened.metadata.vector_ids_where("category", "dress").tolist() == [0, 2]
    assert opened.metadata.vector_ids_where("category", "WRONG").tolist() == []
    assert all(opened.resolve_image_path(p).is_file() for _, _, p in _image_rows(out))
    assert verify_index(out, deep=True) == []


def test_add_the_same_photos_again_publishes_nothing(idx, new_folder, capsys):
    first = _add(idx, images=new_folder).version
    versions = _versions(idx)

    rc, out, err = _cli(capsys, "add", idx, "--images", new_folder, "--device", "cpu", "--workers", "0", "--quiet")

    assert rc == 0
    assert "nothing to add: 3 of the 3 photos are already indexed" in out
    assert "3 photos already indexed" in err and "already indexed as item new-2" in err
    assert resolve_version_dir(idx) == first and _versions(idx) == versions and _staging(idx) == []
    assert open_index(idx).manifest.history[-1]["operation"] == "add"
    assert len(open_index(idx).manifest.history) == 1


def test_photos_already_indexed_are_not_encoded_again(idx, synthetic_catalog, tmp_path, monkeypatch):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(synthetic_catalog.parent / "images" / "sku-0003_1.jpg", folder / "renamed.jpg")
    _photo(folder / "fresh.jpg", seed=40)
    shutil.copy(folder / "fresh.jpg", folder / "fresh-copy.jpg")  # the same bytes twice in one add
    encoded_paths = []
    real_encode = encoding_module.encode_paths

    def recording_encode(paths, *args, **kwargs):
        encoded_paths.extend(paths)
        return real_encode(paths, *args, **kwargs)

    monkeypatch.setattr(encoding_module, "encode_paths", recording_encode)
    result = _add(idx, images=folder)

    # Photos are taken in name order: "fresh-copy.jpg" comes first and is the one encoded.
    assert [p.name for p in encoded_paths] == ["fresh-copy.jpg"]
    assert result.added_vectors == 1 and result.vectors == 25
    reasons = {os.path.basename(a["path"]): (a["item_id"], a["reason"]) for a in result.already_indexed}
    assert set(reasons) == {"renamed.jpg", "fresh.jpg"}
    assert reasons["renamed.jpg"] == ("sku-0003", "already indexed as item sku-0003 (images/sku-0003_1.jpg)")
    assert reasons["fresh.jpg"][0] == "fresh-copy" and "same bytes as" in reasons["fresh.jpg"][1]
    opened = open_index(idx)
    assert opened.metadata.item("renamed") is None and opened.metadata.item("fresh") is None
    assert opened.metadata.item("fresh-copy")["image_count"] == 1


def test_add_photos_of_an_existing_item(idx, tmp_path):
    folder = _folder(tmp_path / "more", ["sku-0005.jpg", "extra/sku-0005.png"])

    result = _add(idx, images=folder)

    assert (result.added_vectors, result.added_items, result.items) == (2, 0, 12)
    item = open_index(idx).metadata.item("sku-0005")
    assert item["image_count"] == 4 and len(item["images"]) == 4
    assert item["attributes"]["category"]  # the catalogue's attributes, not the folder's empty ones
    assert verify_index(idx) == []


def test_corrupt_photos_are_skipped_and_reported(idx, new_folder, capsys):
    (new_folder / "broken.jpg").write_text("not a photo")

    rc, out, err = _cli(capsys, "add", idx, "--images", new_folder, "--device", "cpu", "--workers", "0", "--quiet")

    assert rc == 0
    assert "added 3 photos (3 new items)" in out and "now holds 27 photos of 15 items" in out
    assert "skipped 1 photos" in err and "broken.jpg" in err
    assert open_index(idx).manifest.history[-1]["skipped"] == 1
    # Run again: the corrupt photo is the only one not indexed; retrying it is not an error.
    rc, out, err = _cli(capsys, "add", idx, "--images", new_folder, "--device", "cpu", "--workers", "0", "--quiet")
    assert rc == 0 and "nothing to add" in out and "1 could not be added" in out and "broken.jpg" in err


def test_add_where_nothing_decodes_is_an_error(idx, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("text")
    (bad / "b.png").write_bytes(b"")
    link_before = os.readlink(idx / CURRENT)

    rc, out, err = _cli(capsys, "add", idx, "--images", bad, "--device", "cpu", "--workers", "0", "--quiet")

    assert rc == 2
    assert err.strip().splitlines()[-1].startswith("error: none of the 2 photos could be encoded")
    assert os.readlink(idx / CURRENT) == link_before and _staging(idx) == []


def test_a_different_photo_at_an_indexed_path_is_refused(tmp_path, tiny_checkpoint):
    shop = _folder(tmp_path / "shop", ["a.jpg", "b.jpg"])
    out = tmp_path / "idx"
    _build(out, tiny_checkpoint, images=shop)
    _photo(shop / "a.jpg", seed=99)  # replaced in place

    result = _add(out, images=shop)

    assert result.version is None
    assert len(result.skipped) == 1 and "a different photo is indexed at this path as item a" in \
        result.skipped[0]["reason"]
    assert [a["item_id"] for a in result.already_indexed] == ["b"]


def test_add_needs_the_model_the_index_was_built_with(idx, new_folder, tmp_path, tiny_checkpoint, capsys):
    moved = shutil.copy(tiny_checkpoint, tmp_path / "moved.safetensors")
    edit_manifest(idx, lambda m: m["model"].update(spec=str(tmp_path / "gone.safetensors")))
    link_before = os.readlink(idx / CURRENT)

    rc, _, err = _cli(capsys, "add", idx, "--images", new_folder, "--device", "cpu", "--workers", "0", "--quiet")
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error:") and "gone.safetensors" in err

    import torch

    from model import build_from_backbone, save_checkpoint

    from .conftest import TINY_PREP

    retrained = build_from_backbone("resnet18", "none", dim=32, preprocessing=TINY_PREP)
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)
    other = save_checkpoint(retrained, tmp_path / "other.safetensors")
    rc, _, err = _cli(capsys, "add", idx, "--images", new_folder, "--model", other, "--device", "cpu",
                      "--workers", "0", "--quiet")
    assert rc == 2
    assert "is not the model" in err and "would not be comparable" in err
    assert os.readlink(idx / CURRENT) == link_before and _staging(idx) == []

    # The same weights at a new place are fine.
    rc, out, _ = _cli(capsys, "add", idx, "--images", new_folder, "--model", moved, "--device", "cpu",
                      "--workers", "0", "--quiet")
    assert rc == 0 and "added 3 photos" in out


def test_add_to_something_that_is_not_an_index(tmp_path, new_folder, capsys):
    rc, _, err = _cli(capsys, "add", tmp_path / "nothing", "--images", new_folder)
    assert rc == 2 and err.startswith("error:") and "does not exist" in err
    assert not (tmp_path / "nothing").exists()
    rc, _, err = _cli(capsys, "add", tmp_path / "nothing", "--device", "cpu")
    assert rc == 2 and "--images" in err


def test_add_to_a_version_folder_names_the_index_folder(idx, new_folder):
    with pytest.raises(IndexLayoutError, match="version folder"):
        _add(resolve_version_dir(idx), images=new_folder)


# --------------------------------------------------------------------------- remove, per FAISS index type


@pytest.mark.parametrize("factory", FACTORIES)
def test_remove_then_add_keeps_ids_and_vectors_aligned(factory, factory_indexes, tmp_path, new_folder):
    import faiss

    idx = _copy_index(factory_indexes[factory], tmp_path / "idx")
    before = _vectors_by_path(idx)
    index_type = type(open_index(idx).faiss_index)

    result = remove_items(idx, ["sku-0002", "sku-0007", "not-there"])

    assert result.removed_items == ["sku-0002", "sku-0007"] and result.unknown_items == ["not-there"]
    assert (result.removed_vectors, result.vectors, result.items) == (4, 20, 10)
    opened = open_index(idx)
    assert type(opened.faiss_index) is index_type
    assert opened.faiss_index.ntotal == 20 and opened.manifest.counts.vectors == 20
    rows = _image_rows(idx)
    assert [r[0] for r in rows] == list(range(20))
    assert {r[1] for r in rows}.isdisjoint({"sku-0002", "sku-0007"})
    old_order = [p for p in before if not p.startswith(("images/sku-0002_", "images/sku-0007_"))]
    assert [r[2] for r in rows] == old_order, "kept photos keep their relative order"
    after = _vectors_by_path(idx)
    for path in old_order:
        np.testing.assert_array_equal(after[path], before[path])
    queries = np.stack([before[p] for p in old_order])
    scores, ids = opened.faiss_index.search(queries, 1)
    assert ids[:, 0].tolist() == list(range(20))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    if factory.startswith("IVF"):
        ivf = faiss.extract_index_ivf(opened.faiss_index)
        assert ivf.nlist == 4 and ivf.direct_map.type == faiss.DirectMap.NoMap
    assert verify_index(idx) == []

    added = _add(idx, images=new_folder)
    assert (added.added_vectors, added.vectors) == (3, 23)
    opened = open_index(idx)
    assert type(opened.faiss_index) is index_type and opened.faiss_index.ntotal == 23
    assert [r[0] for r in _image_rows(idx)] == list(range(23))
    assert verify_index(idx, deep=True, sample=23) == []


def test_remove_keeps_the_trained_ivf_clusters(factory_indexes, tmp_path):
    import faiss

    idx = _copy_index(factory_indexes["IVF4,Flat"], tmp_path / "idx")
    before = open_index(idx)  # kept referenced: the quantiser lives inside the index object
    centroids = faiss.extract_index_ivf(before.faiss_index).quantizer.reconstruct_n(0, 4)

    remove_items(idx, ["sku-0001"])

    after = open_index(idx)
    assert after.faiss_index.ntotal == 22
    np.testing.assert_array_equal(faiss.extract_index_ivf(after.faiss_index).quantizer.reconstruct_n(0, 4), centroids)


# --------------------------------------------------------------------------- remove, CLI


def test_cli_remove_from_ids_and_a_file(idx, tmp_path, capsys):
    id_file = tmp_path / "gone.txt"
    id_file.write_text("# discontinued this week\nsku-0003\n\n   sku-0004  \n#sku-0005\nunknown-1\n")
    assert read_item_ids_file(id_file) == ["sku-0003", "sku-0004", "unknown-1"]

    rc, out, err = _cli(capsys, "remove", idx, "sku-0006", "--item-ids", id_file)

    assert rc == 0
    assert "removed 3 items (6 photos)" in out and "now holds 18 photos of 9 items" in out
    assert "not in the index" in err and "unknown-1" in err
    opened = open_index(idx)
    assert all(opened.metadata.item(i) is None for i in ("sku-0003", "sku-0004", "sku-0006"))
    assert opened.metadata.item("sku-0005")["image_count"] == 2
    assert verify_index(idx) == []


def test_cli_remove_unknown_ids_only_publishes_nothing(idx, capsys):
    link_before = os.readlink(idx / CURRENT)
    rc, out, err = _cli(capsys, "remove", idx, "nope", "nada")
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: none of the 2 item ids") and "nope" in lines[0]
    assert os.readlink(idx / CURRENT) == link_before and _staging(idx) == []


def test_cli_remove_refuses_to_empty_the_index(idx, capsys):
    all_ids = [r[0] for r in _sql(resolve_version_dir(idx), "SELECT item_id FROM items")]
    link_before = os.readlink(idx / CURRENT)

    rc, _, err = _cli(capsys, "remove", idx, *all_ids)

    assert rc == 2 and "would leave" in err and "empty" in err and "build" in err
    assert len(err.strip().splitlines()) == 1
    assert os.readlink(idx / CURRENT) == link_before
    assert open_index(idx).faiss_index.ntotal == 24


def test_cli_remove_needs_ids(idx, tmp_path, capsys):
    rc, _, err = _cli(capsys, "remove", idx)
    assert rc == 2 and "item ids" in err
    rc, _, err = _cli(capsys, "remove", idx, "--item-ids", tmp_path / "missing.txt")
    assert rc == 2 and err.startswith("error: cannot read the item id list")


def test_remove_leaves_a_consistent_compact_metadata_file(idx):
    remove_items(idx, [f"sku-{i:04d}" for i in range(1, 12)])
    version = resolve_version_dir(idx)
    assert _sql(version, "SELECT item_id, image_count FROM items") == [("sku-0012", 2)]
    assert [r[0] for r in _image_rows(idx)] == [0, 1]
    assert _sql(version, "PRAGMA integrity_check") == [("ok",)]
    assert not list(version.glob("*-journal"))


def test_changed_index_is_served(idx, new_folder):
    from service.engine import SearchEngine

    _add(idx, images=new_folder)
    remove_items(idx, ["sku-0001", "new-2"])
    engine = SearchEngine.load(idx, device="cpu", index_device="cpu")

    for name, item_id in (("new-1.jpg", "new-1"), ("sub/new-3.jpg", "new-3")):
        hits, _ = engine.search((new_folder / name).read_bytes(), k=3)
        assert hits[0].item_id == item_id
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert engine.describe()["index"]["items"] == 13
