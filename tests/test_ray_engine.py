"""`indexer build|add --engine ray`: the same vectors, ids and skips as a local build, on a local Ray.

Each Ray run is a separate `python -m indexer` process with a time limit: a Ray pipeline that stalls
(for example, actors holding every CPU so nothing can read) then fails the test instead of hanging CI.
"""
from __future__ import annotations

import builtins
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer.store import open_index

ROOT = Path(__file__).resolve().parents[1]
RAY_RUN_LIMIT_S = 300


def _indexer(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "indexer", *args, "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=RAY_RUN_LIMIT_S, env=env)


def _vectors_and_rows(index_dir: Path) -> tuple[np.ndarray, list[tuple]]:
    opened = open_index(index_dir)
    vectors = opened.faiss_index.reconstruct_n(0, opened.faiss_index.ntotal)
    with sqlite3.connect(opened.version_dir / "metadata.sqlite") as conn:
        rows = conn.execute("SELECT vector_id, item_id, path, sha256 FROM images ORDER BY vector_id").fetchall()
    return vectors, rows


@pytest.fixture
def photos(tmp_path, synthetic_catalog) -> tuple[Path, Path]:
    """(a folder of 16 catalogue photos and two bad files, a folder of 4 more photos to add)."""
    source = sorted((synthetic_catalog.parent / "images").glob("*.jpg"))
    first, more = tmp_path / "first", tmp_path / "more"
    first.mkdir(), more.mkdir()
    for photo in source[:16]:
        shutil.copy(photo, first / photo.name)
    for photo in source[16:20]:
        shutil.copy(photo, more / photo.name)
    (first / "notes.jpg").write_text("not a photo")
    (first / "empty.png").write_bytes(b"")
    return first, more


def test_a_ray_build_and_add_match_the_local_ones(tmp_path, tiny_checkpoint, photos):
    first, more = photos
    results = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        built = _indexer("build", "--images", str(first), "--out", str(out), "--model", str(tiny_checkpoint),
                         "--batch-size", "4", "--engine", engine)
        assert built.returncode == 0, built.stderr[-2000:]
        skipped = sorted(line.strip() for line in built.stderr.splitlines() if line.startswith("  "))
        added = _indexer("add", str(out), "--images", str(more), "--batch-size", "4", "--engine", engine)
        assert added.returncode == 0, added.stderr[-2000:]
        results[engine] = (_vectors_and_rows(out), skipped)
    (local_vectors, local_rows), local_skipped = results["local"]
    (ray_vectors, ray_rows), ray_skipped = results["ray"]
    assert len(local_rows) == 20 and ray_rows == local_rows  # same ids, items, paths and hashes, in order
    np.testing.assert_allclose(ray_vectors, local_vectors, atol=1e-5)
    assert len(ray_skipped) == 2 and ray_skipped == local_skipped  # the same two files, the same reasons
    assert open_index(tmp_path / "ray").manifest.timings["engine"] == "ray"


def test_without_ray_installed_the_error_says_what_to_install(monkeypatch, tiny_checkpoint, photos):
    from indexer.ray_engine import RayEngineError, encode_paths_on_ray
    from model import load_model

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RayEngineError, match="pip install -r requirements-ray.txt"):
        encode_paths_on_ray(sorted(photos[0].glob("*.jpg")), load_model(str(tiny_checkpoint)))


def test_a_ray_address_where_nothing_listens_fails_fast(tmp_path, tiny_checkpoint, photos):
    import socket

    with socket.socket() as probe:  # a port on this machine that is free, so nothing answers there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _indexer("build", "--images", str(photos[0]), "--out", str(tmp_path / "x"), "--model",
                    str(tiny_checkpoint), "--ray-address", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert f"nothing answers at Ray address 127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "x" / "current").exists()
    bad = _indexer("build", "--images", str(photos[0]), "--out", str(tmp_path / "x"), "--model",
                   str(tiny_checkpoint), "--ray-address", "no-port-here")
    assert bad.returncode == 2 and "must be ray://host:port, host:port or auto" in bad.stderr
