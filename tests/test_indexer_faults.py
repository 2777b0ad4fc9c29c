"""Writers that die: `kill -9` of a real `python -m indexer build|add` mid-way, a failing write, and a
second writer. The live index must stay the previous, complete version, and the next writer must work."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer.stores import faiss as faiss_store_module
from indexer.__main__ import main
from indexer.add import AddOptions, add_photos
from indexer.layout import CURRENT, resolve_version_dir
from indexer.store import open_index
from indexer.verify import verify_index

from .test_indexer import _build, _copy_index, _folder, _staging, _versions

ROOT = Path(__file__).resolve().parents[1]
# Encoding one photo per batch on one thread, this many take seconds even on a fast CPU: ample time
# to kill the writer once it is under way, long before it could publish.
SLOW_CATALOGUE_PHOTOS = 200
# A writer that must finish: long enough to try a second writer meanwhile (checked), short to wait for.
SHORT_CATALOGUE_PHOTOS = 50
PROGRESS = re.compile(r"(\d+)/(\d+)")


@pytest.fixture(scope="module")
def slow_catalogue(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("slow"), [f"photo-{i:03d}.jpg" for i in range(SLOW_CATALOGUE_PHOTOS)])


@pytest.fixture(scope="module")
def short_catalogue(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("short"), [f"short-{i:03d}.jpg" for i in range(SHORT_CATALOGUE_PHOTOS)])


@pytest.fixture
def idx(tmp_path, tiny_index) -> Path:
    return _copy_index(tiny_index, tmp_path / "idx")


def _start_writer(args: list, log: Path) -> subprocess.Popen:
    # One thread: on a busy machine the writer then slows in proportion, rather than stalling in
    # spinning OpenMP threads. Its own session, so that the kill reaches any process it started too.
    with open(log, "w") as sink:
        return subprocess.Popen([sys.executable, "-m", "indexer", *[str(a) for a in args],
                                 "--device", "cpu", "--workers", "0", "--batch-size", "1"],
                                cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=sink, start_new_session=True)


def _wait_until_encoding(writer: subprocess.Popen, index_dir: Path, log: Path, timeout: float = 120) -> Path:
    """Block until the writer holds a staging folder and has encoded at least one photo; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if writer.poll() is not None:
            pytest.fail(f"the writer ended (rc {writer.returncode}) before it could be killed:\n{log.read_text()}")
        staging = _staging(index_dir) if index_dir.is_dir() else []
        done = [int(m.group(1)) for m in PROGRESS.finditer(log.read_text(errors="replace"))]
        if staging and done and max(done) >= 1:
            return staging[0]
        time.sleep(0.01)
    writer.kill()
    pytest.fail(f"the writer did not start encoding within {timeout}s:\n{log.read_text()}")


def _kill_9(writer: subprocess.Popen) -> None:
    os.killpg(writer.pid, signal.SIGKILL)
    assert writer.wait(timeout=30) == -signal.SIGKILL


def _assert_previous_version_intact(index_dir: Path, version: Path, vectors: int, items: int) -> None:
    opened = open_index(index_dir)
    assert opened.version_dir == version
    assert opened.faiss_index.ntotal == opened.metadata.count_images() == vectors
    assert opened.manifest.counts.items == opened.metadata.count_items() == items
    assert verify_index(index_dir) == []


def test_kill_9_during_build_leaves_the_previous_index_live(idx, tmp_path, tiny_checkpoint, slow_catalogue):
    live = resolve_version_dir(idx)
    log = tmp_path / "build.log"
    writer = _start_writer(["build", "--images", slow_catalogue, "--out", idx, "--model", tiny_checkpoint], log)

    staging = _wait_until_encoding(writer, idx, log)
    _kill_9(writer)

    assert staging.is_dir(), "the dead writer's staging folder is left behind"
    _assert_previous_version_intact(idx, live, vectors=24, items=12)
    assert _versions(idx) == [live]

    # The next writer takes over: it removes the abandoned staging folder and publishes.
    small = _folder(tmp_path / "small", ["a.jpg", "b.jpg", "c.jpg"])
    rebuilt = _build(idx, tiny_checkpoint, images=small)
    assert not staging.exists() and _staging(idx) == []
    assert resolve_version_dir(idx) == rebuilt
    assert open_index(idx).faiss_index.ntotal == 3 and verify_index(idx) == []


def test_kill_9_during_add_leaves_the_previous_index_live(idx, tmp_path, slow_catalogue):
    live = resolve_version_dir(idx)
    log = tmp_path / "add.log"
    writer = _start_writer(["add", idx, "--images", slow_catalogue], log)

    staging = _wait_until_encoding(writer, idx, log)
    _kill_9(writer)

    assert staging.is_dir()
    _assert_previous_version_intact(idx, live, vectors=24, items=12)

    small = _folder(tmp_path / "small", ["a.jpg", "b.jpg"])
    result = add_photos(AddOptions(index=idx, images=small, device="cpu", workers=0, progress=False))
    assert result.added_vectors == 2
    assert not staging.exists() and _staging(idx) == []
    opened = open_index(idx)
    assert opened.version_dir == result.version != live
    assert opened.faiss_index.ntotal == 26 and verify_index(idx) == []


def test_a_second_writer_during_add_is_refused(idx, tmp_path, short_catalogue, capsys):
    log = tmp_path / "add.log"
    writer = _start_writer(["add", idx, "--images", short_catalogue], log)
    try:
        _wait_until_encoding(writer, idx, log)

        rc = main(["remove", str(idx), "sku-0001"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2
        assert len(err) == 1 and err[0].startswith("error: another process is writing")
        small = _folder(tmp_path / "small", ["a.jpg"])
        rc = main(["add", str(idx), "--images", str(small), "--device", "cpu", "--workers", "0", "--quiet"])
        assert rc == 2 and "another process is writing" in capsys.readouterr().err
        assert writer.poll() is None, "both refusals happened while the first writer was still writing"

        # The first writer was not disturbed.
        assert writer.wait(timeout=300) == 0, log.read_text()
    finally:
        if writer.poll() is None:
            os.killpg(writer.pid, signal.SIGKILL)
            writer.wait()
    opened = open_index(idx)
    assert opened.faiss_index.ntotal == 24 + SHORT_CATALOGUE_PHOTOS
    assert opened.metadata.item("sku-0001") is not None
    assert verify_index(idx) == []


def test_a_write_that_fails_before_publishing_leaves_nothing_behind(idx, tmp_path, monkeypatch, capsys):
    live = resolve_version_dir(idx)
    link_before = os.readlink(idx / CURRENT)

    def disk_full(index, path):
        path.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faiss_store_module, "write_faiss", disk_full)
    small = _folder(tmp_path / "small", ["a.jpg"])
    rc = main(["add", str(idx), "--images", str(small), "--device", "cpu", "--workers", "0", "--quiet"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: [Errno 28] No space left on device"
    rc = main(["remove", str(idx), "sku-0001"])
    assert rc == 2 and "No space left" in capsys.readouterr().err

    assert os.readlink(idx / CURRENT) == link_before
    assert _staging(idx) == [] and _versions(idx) == [live]
    _assert_previous_version_intact(idx, live, vectors=24, items=12)
