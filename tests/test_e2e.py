"""End to end, as a shop's engineer runs it: generate a catalogue, `python -m indexer build` with the
default offline-pretrained model, `python -m service` as a real uvicorn process, then upload
altered copies of indexed photos and garbage."""
from __future__ import annotations

import csv
import io
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from PIL import Image

from demo.synth import generate_catalog, street_view

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    csv_path = generate_catalog(work / "catalog", n_items=30, photos_per_item=1, size=224, seed=7)
    built = _run(["-m", "indexer", "build", "--catalog", str(csv_path), "--out", str(work / "index"),
                  "--batch-size", "16", "--quiet"])
    assert built.returncode == 0, built.stderr
    assert "indexed 30 photos of 30 items" in built.stdout

    port = free_port()
    log = open(work / "service.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "service", "--index", str(work / "index"), "--port", str(port)],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, (work / "service.log").read_text()
        try:
            if httpx2.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx2.TransportError:
            time.sleep(0.5)
    else:
        pytest.fail("service did not come up: " + (work / "service.log").read_text())
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    yield base, csv_path.parent, rows, process
    process.terminate()
    process.wait(timeout=30)
    log.close()


def _upload(base: str, data: bytes, name: str = "photo.jpg", k: int = 5) -> httpx2.Response:
    return httpx2.post(f"{base}/search", params={"k": k}, files={"image": (name, data, "image/jpeg")}, timeout=60)


def test_unmodified_catalogue_photos_come_back_first(served):
    base, folder, rows, _ = served
    for row in rows[:10]:
        body = _upload(base, (folder / row["path"]).read_bytes()).json()
        assert body["results"][0]["item_id"] == row["item_id"]


def test_altered_copies_find_their_item(served):
    base, folder, rows, _ = served
    rng = random.Random(3)
    ranks = []
    for row in rows:
        altered = street_view(Image.open(folder / row["path"]), rng)
        buffer = io.BytesIO()
        altered.save(buffer, "JPEG", quality=80)
        ids = [r["item_id"] for r in _upload(base, buffer.getvalue(), k=5).json()["results"]]
        ranks.append(ids.index(row["item_id"]) if row["item_id"] in ids else None)
    print("ranks of altered copies:", ranks)
    found_top5 = sum(r is not None for r in ranks)
    found_top1 = sum(r == 0 for r in ranks)
    # Cropped, tilted, recoloured copies: the pretrained embedder must still find nearly all of them.
    assert found_top5 >= 0.9 * len(rows), ranks
    assert found_top1 >= 0.7 * len(rows), ranks


def test_garbage_is_refused_and_server_lives(served):
    base, folder, rows, process = served
    assert _upload(base, b"GIF89a but not really").status_code == 400
    assert _upload(base, os.urandom(5000)).status_code == 400
    photo = (folder / rows[0]["path"]).read_bytes()
    assert _upload(base, photo[:500]).status_code == 400
    assert httpx2.post(f"{base}/search", files={"file": ("a.jpg", photo)}, timeout=30).status_code == 422
    assert process.poll() is None
    assert _upload(base, photo).json()["results"][0]["item_id"] == rows[0]["item_id"]


def test_item_photo_is_served(served):
    base, folder, rows, _ = served
    response = httpx2.get(f"{base}/items/{rows[4]['item_id']}/image", timeout=30)
    assert response.status_code == 200
    assert response.content == (folder / rows[4]["path"]).read_bytes()


def test_service_refuses_a_missing_index_with_one_clear_line(tmp_path):
    result = _run(["-m", "service", "--index", str(tmp_path / "missing"), "--port", str(free_port())])
    assert result.returncode == 2
    assert "error: cannot start:" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
