"""`python -m indexer verify`: consistency checks of fresh, changed and damaged indexes."""
from __future__ import annotations

import shutil
import sqlite3

import pytest

from indexer.layout import FAISS_FILE, METADATA_FILE, resolve_version_dir
from indexer.remove import remove_items
from indexer.errors import IndexBuildError, IndexUpdateError
from indexer.verify import verify_index

from .conftest import edit_manifest
from .test_indexer import _photo
from .test_indexer_incremental import _add, _cli

# --------------------------------------------------------------------------- verify


def test_verify_a_fresh_and_a_changed_index(idx, new_folder, capsys):
    assert verify_index(idx) == []
    assert verify_index(idx, deep=True) == []
    _add(idx, images=new_folder)
    rc, out, _ = _cli(capsys, "verify", idx, "--deep")
    assert rc == 0 and out.startswith("ok:") and "27 vectors, 15 items" in out


def _damage_metadata(idx, statement: str) -> None:
    conn = sqlite3.connect(resolve_version_dir(idx) / METADATA_FILE)
    conn.executescript(statement)
    conn.commit()
    conn.close()


@pytest.mark.parametrize("statement, expected", [
    ("DELETE FROM images WHERE vector_id = 23", "metadata holds 23 photo rows, the manifest says 24"),
    ("UPDATE images SET vector_id = 40 WHERE vector_id = 23", "vector ids are not contiguous"),
    ("UPDATE items SET image_count = 3 WHERE item_id = 'sku-0004'", "sku-0004 says 3, has 2"),
    ("INSERT INTO items VALUES ('ghost', '{}', 1)", "1 items have no photos: ghost"),
    ("DELETE FROM items WHERE item_id = 'sku-0009'", "photos of 1 items missing from the items table: sku-0009"),
])
def test_verify_finds_damaged_metadata(idx, capsys, statement, expected):
    _damage_metadata(idx, statement)
    problems = verify_index(idx)
    assert any(expected in p for p in problems), problems
    rc, out, _ = _cli(capsys, "verify", idx)
    assert rc == 1 and any(expected in line for line in out.splitlines() if line.startswith("problem:"))


def test_verify_finds_manifest_and_faiss_disagreements(idx):
    import faiss

    def claim_more(manifest):
        manifest["dim"] = 64
        manifest["counts"]["items"] = 13

    edit_manifest(idx, claim_more)
    problems = verify_index(idx)
    assert any("the faiss store holds 32-dim vectors, the manifest says 64" in p for p in problems)
    assert any("metadata holds 12 items, the manifest says 13" in p for p in problems)

    scaled = faiss.IndexFlatIP(32)
    vectors = faiss.read_index(str(resolve_version_dir(idx) / FAISS_FILE)).reconstruct_n(0, 24)
    vectors[5] *= 2.0
    scaled.add(vectors)
    faiss.write_index(scaled, str(resolve_version_dir(idx) / FAISS_FILE))
    assert any("1 vectors are not unit length: id 5 norm 2.0000" in p for p in verify_index(idx))

    (resolve_version_dir(idx) / FAISS_FILE).write_bytes(b"garbage")
    assert any("is corrupt" in p for p in verify_index(idx))


def test_verify_deep_checks_photos_and_vectors(idx, synthetic_catalog, tmp_path, capsys):
    photos = shutil.copytree(synthetic_catalog.parent, tmp_path / "catalog")
    edit_manifest(idx, lambda m: m["catalog"].update(image_root=str(photos)))
    assert verify_index(idx, deep=True, sample=24) == []

    # Swapping two stored vectors keeps every quick check happy; only re-embedding notices.
    import faiss

    version = resolve_version_dir(idx)
    vectors = faiss.read_index(str(version / FAISS_FILE)).reconstruct_n(0, 24)
    vectors[[3, 4]] = vectors[[4, 3]]
    swapped = faiss.IndexFlatIP(32)
    swapped.add(vectors)
    faiss.write_index(swapped, str(version / FAISS_FILE))
    assert verify_index(idx) == []
    problems = verify_index(idx, deep=True, sample=24)
    assert len(problems) == 1 and "2 of 24 re-embedded photos differ" in problems[0]
    assert "id 3" in problems[0] and "id 4" in problems[0]

    (photos / "images" / "sku-0002_0.jpg").unlink()
    _photo(photos / "images" / "sku-0006_1.jpg", seed=3)
    problems = verify_index(idx, deep=True, sample=0)
    assert any("1 photos are missing" in p and "sku-0002_0.jpg" in p for p in problems), problems
    assert any("1 photos changed" in p and "sku-0006_1.jpg" in p for p in problems), problems
    rc, out, _ = _cli(capsys, "verify", idx, "--deep", "--sample", "1")
    assert rc == 1 and out.count("problem:") >= 2


def test_verify_on_unusable_input(tmp_path, capsys):
    rc, out, err = _cli(capsys, "verify", tmp_path / "missing")
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "x.txt").write_text("x")
    rc, _, err = _cli(capsys, "verify", folder)
    assert rc == 2 and "not a snap2shop index" in err


def test_errors_are_one_line_without_traceback(idx, capsys):
    rc, out, err = _cli(capsys, "add", idx, "--catalog", idx / "missing.csv")
    assert rc == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("error:") and "Traceback" not in err
    with pytest.raises((IndexUpdateError, IndexBuildError)):
        remove_items(idx, [])
