"""The Milvus vector store, on Milvus Lite files: the same answers as FAISS with exact search, the
index life cycle (build, add, remove, verify, one collection per live version), the service on it,
and Lite's limits (one process per file, no IVF_PQ) refused with clear errors.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.__main__ import main
from indexer.layout import resolve_version_dir
from indexer.stores.milvus import connect, disconnect
from indexer.store import open_index
from indexer.verify import verify_index
from service.app import create_app
from service.engine import SearchEngine
from service.settings import Settings

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
# A second process on a locked Lite file must fail, not wait: the limit is far above the ~5 s it takes.
REFUSAL_LIMIT_S = 120


def _cli(*args: str) -> int:
    return main([*args, "--quiet"] if args[0] in ("build", "add") else list(args))


def _build(catalog: Path, ckpt: Path, out: Path, *store: str, factory: str = "Flat") -> int:
    return _cli("build", "--catalog", str(catalog), "--model", str(ckpt), "--out", str(out), "--device", "cpu",
                "--workers", "0", "--index-factory", factory, *store)


def _collections(db: Path) -> list[str]:
    client = connect(str(db))
    try:
        return sorted(client.list_collections())
    finally:
        disconnect(client, str(db))


def _rows(catalog: Path) -> list[dict]:
    with catalog.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def milvus_index(tmp_path, synthetic_catalog, tiny_checkpoint) -> tuple[Path, Path]:
    """(index folder, Lite file) of the synthetic catalogue in a Milvus store with exact search."""
    db, out = tmp_path / "vectors.db", tmp_path / "idx"
    assert _build(synthetic_catalog, tiny_checkpoint, out, "--store", "milvus", "--milvus-uri", str(db)) == 0
    return out, db


def _queries(index_dir: Path, n: int) -> np.ndarray:
    opened = open_index(index_dir)
    try:
        ids = np.linspace(0, opened.store.count() - 1, n).round().astype(np.int64)
        noise = np.random.default_rng(0).normal(scale=0.3, size=(n, opened.store.dim)).astype(np.float32)
        queries = opened.store.vectors(ids) + noise  # near catalogue photos, not on them: ties stay rare
    finally:
        opened.close()
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def test_exact_search_matches_the_faiss_store(milvus_index, tmp_path, synthetic_catalog, tiny_checkpoint):
    milvus_dir, db = milvus_index
    faiss_dir = tmp_path / "faiss"
    assert _build(synthetic_catalog, tiny_checkpoint, faiss_dir) == 0
    milvus = SearchEngine.load(milvus_dir, device="cpu")
    faiss = SearchEngine.load(faiss_dir, device="cpu")
    try:
        assert milvus.describe()["index"]["store"] == "milvus" and faiss.describe()["index"]["store"] == "faiss"
        categories = sorted({row["category"] for row in _rows(synthetic_catalog)})
        for i, query in enumerate(_queries(faiss_dir, 8)):
            for category in (None, categories[i % len(categories)]):
                want = faiss.search_vector(query[None], k=10, category=category)
                got = milvus.search_vector(query[None], k=10, category=category)
                assert [h.item_id for h in got] == [h.item_id for h in want]
                assert np.allclose([h.score for h in got], [h.score for h in want], atol=1e-4)
                if category is not None:
                    assert got and {h.attributes["category"] for h in got} == {category}
        assert milvus.store.count("no such category") == 0
        assert milvus.search_vector(_queries(faiss_dir, 1), k=5, category='a "quoted" \\ name') == []
    finally:
        milvus.index.close()
        faiss.index.close()


def test_add_remove_and_verify_keep_one_collection_per_live_version(milvus_index, new_folder, capsys):
    out, db = milvus_index
    first = _collections(db)
    assert len(first) == 1 and first[0].startswith("snap2shop_")
    assert _cli("add", str(out), "--images", str(new_folder), "--device", "cpu", "--workers", "0") == 0
    opened = open_index(out)
    try:
        assert opened.store.count() == opened.metadata.count_images() == 27
        probe = opened.store.vectors(np.array([26]))
        hits = opened.store.search(probe, 1)
        assert hits.ids[0] == 26 and hits.scores[0] == pytest.approx(1.0, abs=1e-5)
    finally:
        opened.close()
    assert len(_collections(db)) == 2  # the live version's and the previous one's

    assert _cli("remove", str(out), "sku-0001", "sku-0002") == 0
    assert _cli("verify", str(out)) == 0 and "consistent: 23 vectors" in capsys.readouterr().out
    after = _collections(db)
    assert len(after) == 2 and first[0] not in after  # the version two changes back went, with its collection
    opened = open_index(out)
    try:
        items = {item for item, _ in opened.metadata.images_for_vectors(range(23)).values()}
        assert "sku-0001" not in items and opened.store.count("dress") == opened.metadata.vector_ids_where(
            "category", "dress").size
    finally:
        opened.close()
    assert verify_index(out, deep=True, sample=5) == []


def test_verify_reports_a_collection_that_disagrees_with_the_manifest(milvus_index):
    out, db = milvus_index
    name = _collections(db)[0]
    client = connect(str(db))
    try:
        client.delete(name, ids=[3, 4])
    finally:
        disconnect(client, str(db))
    problems = verify_index(out)
    assert any("the milvus store holds 22 vectors, the manifest says 24" in p for p in problems), problems


def test_the_service_searches_and_filters_on_milvus(milvus_index, synthetic_catalog):
    out, _ = milvus_index
    rows = _rows(synthetic_catalog)
    with TestClient(create_app(Settings(index=out, device="cpu", reload_poll_s=0))) as client:
        health = client.get("/healthz").json()
        assert "milvus" in str(health)
        for row in rows[::6]:
            photo = (synthetic_catalog.parent / row["path"]).read_bytes()
            body = client.post("/search?k=3", files={"image": ("p.jpg", photo, "image/jpeg")}).json()
            assert body["results"][0]["item_id"] == row["item_id"]
            filtered = client.post(f"/search?k=2&category={row['category']}",
                                   files={"image": ("p.jpg", photo, "image/jpeg")}).json()
            assert filtered["results"] and {r["category"] for r in filtered["results"]} == {row["category"]}


def test_a_failed_change_leaves_no_collection_behind(milvus_index, new_folder, monkeypatch, capsys):
    from indexer.stores import milvus as milvus_store

    out, db = milvus_index
    before, live = _collections(db), resolve_version_dir(out)

    def refuse(self, staging):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(milvus_store.MilvusStore, "persist", refuse)
    assert _cli("add", str(out), "--images", str(new_folder), "--device", "cpu", "--workers", "0") == 2
    assert "No space left" in capsys.readouterr().err
    assert _collections(db) == before and resolve_version_dir(out) == live
    monkeypatch.undo()
    assert verify_index(out) == []


def test_lite_refuses_index_types_it_cannot_build_before_encoding(tmp_path, synthetic_catalog, tiny_checkpoint,
                                                                   capsys):
    db = tmp_path / "v.db"
    store = ("--store", "milvus", "--milvus-uri", str(db))
    assert _build(synthetic_catalog, tiny_checkpoint, tmp_path / "pq", *store, factory="IVF2,PQ4") == 2
    assert "Milvus Lite accepts IVF_PQ but does not build it" in capsys.readouterr().err
    assert _build(synthetic_catalog, tiny_checkpoint, tmp_path / "odd", *store, factory="LSH") == 2
    assert "cannot build 'LSH'" in capsys.readouterr().err
    assert not (tmp_path / "pq").exists() and not (tmp_path / "odd").exists()
    for factory in ("HNSW16", "IVF2,Flat", "IVF2,SQ8"):
        out = tmp_path / factory.replace(",", "-")
        assert _build(synthetic_catalog, tiny_checkpoint, out, *store, factory=factory) == 0
        assert verify_index(out) == []
        engine = SearchEngine.load(out, device="cpu")
        try:
            row = _rows(synthetic_catalog)[5]
            hits, _ = engine.search((synthetic_catalog.parent / row["path"]).read_bytes(), k=3)
            assert hits[0].item_id == row["item_id"]
        finally:
            engine.index.close()


def _run(module: str, *args: str, timeout: float = REFUSAL_LIMIT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_lite_file_open_in_another_process_is_refused_not_waited_for(milvus_index, new_folder):
    out, db = milvus_index
    serving = open_index(out)  # this process holds the file, as a running service would
    try:
        before = resolve_version_dir(out)
        added = _run("indexer", "add", str(out), "--images", str(new_folder), "--device", "cpu", "--quiet")
        assert added.returncode == 2, added.stderr
        assert "Milvus Lite allows one process per file" in added.stderr
        assert resolve_version_dir(out) == before
        served = _run("service", "--index", str(out), "--device", "cpu", "--port", str(free_port()))
        assert served.returncode == 2 and "cannot start" in served.stderr
        assert "one process per file" in served.stderr
        assert serving.store.count() == 24  # the holder is unaffected
    finally:
        serving.close()
    added = _run("indexer", "add", str(out), "--images", str(new_folder), "--device", "cpu", "--quiet")
    assert added.returncode == 0, added.stderr  # released: the next process gets the file


def test_unreachable_server_and_mismatched_store_options_fail_clearly(milvus_index, tmp_path, synthetic_catalog,
                                                                      tiny_checkpoint, capsys):
    out, _ = milvus_index
    started = time.monotonic()
    uri = f"http://127.0.0.1:{free_port()}"
    assert _build(synthetic_catalog, tiny_checkpoint, tmp_path / "srv", "--milvus-uri", uri) == 2
    assert f"cannot reach Milvus at {uri}" in capsys.readouterr().err
    assert time.monotonic() - started < 30 and not (tmp_path / "srv").exists()
    assert _cli("verify", str(out), "--store", "faiss") == 2
    assert "held in a milvus store, not in faiss" in capsys.readouterr().err
    assert _cli("info", str(out), "--collection", "other") == 2
    assert "named snap2shop_*, not other_*" in capsys.readouterr().err
    assert _build(synthetic_catalog, tiny_checkpoint, tmp_path / "x", "--store", "milvus") == 2
    assert "needs --milvus-uri" in capsys.readouterr().err
    assert _build(synthetic_catalog, tiny_checkpoint, tmp_path / "y", "--collection", "9lives",
                  "--milvus-uri", str(tmp_path / "y.db")) == 2
    assert "must start with a letter" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--milvus-uri and --collection need --store milvus"):
        Settings(index=out, store="faiss", milvus_uri="http://x:19530")


def test_without_pymilvus_the_error_says_what_to_install(milvus_index, monkeypatch, capsys):
    out, _ = milvus_index
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import fails as if it were not installed
    assert _cli("verify", str(out)) == 2
    assert "pip install -r requirements-milvus.txt" in capsys.readouterr().err
