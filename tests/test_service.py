"""The HTTP API over a real (tiny) index: answers, bad input, and start-up refusals."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from indexer.layout import resolve_version_dir
from service.app import create_app
from service.engine import IncompatibleIndexError, SearchEngine
from service.settings import Settings

from .conftest import edit_manifest


@pytest.fixture(scope="module")
def client(tiny_index):
    app = create_app(Settings(index=tiny_index, device="cpu", max_upload_bytes=200_000))
    with TestClient(app) as test_client:
        yield test_client


def _catalog_rows(csv_path: Path) -> list[dict]:
    import csv

    with csv_path.open() as handle:
        return list(csv.DictReader(handle))


def _jpeg_bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_catalogue_photo_finds_its_own_item_first(client, synthetic_catalog):
    rows = _catalog_rows(synthetic_catalog)
    for row in rows[::5]:
        photo = synthetic_catalog.parent / row["path"]
        response = client.post("/search?k=3", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        body = response.json()
        top = body["results"][0]
        assert top["item_id"] == row["item_id"]
        assert top["score"] == pytest.approx(1.0, abs=1e-4)
        # catalogue columns ride along with each result
        assert top["category"] == row["category"] and top["title"] == row["title"]
        assert top["image_url"] == f"/items/{row['item_id']}/image"
        assert body["took_ms"] > 0
        steps = {"read_ms", "decode_ms", "queue_ms", "embed_ms", "search_ms", "metadata_ms"}
        assert set(body["timings_ms"]) == steps and body["index_version"].startswith("v-")


def test_results_are_distinct_items_best_first(client, synthetic_catalog):
    photo = synthetic_catalog.parent / _catalog_rows(synthetic_catalog)[0]["path"]
    body = client.post("/search?k=12", files={"image": ("a.jpg", photo.read_bytes())}).json()
    ids = [r["item_id"] for r in body["results"]]
    scores = [r["score"] for r in body["results"]]
    # 24 photos of 12 items: k=12 must return each item once, even though every item has 2 photos.
    assert len(ids) == 12 and len(set(ids)) == 12
    assert scores == sorted(scores, reverse=True)


def test_k_larger_than_catalogue_returns_every_item_once(client):
    image = Image.new("RGB", (80, 120), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    body = client.post("/search?k=100", files={"image": ("red.png", buffer.getvalue(), "image/png")}).json()
    assert len(body["results"]) == 12


@pytest.mark.parametrize("k", ["0", "101", "abc", "-3"])
def test_bad_k_is_422(client, synthetic_catalog, k):
    photo = synthetic_catalog.parent / _catalog_rows(synthetic_catalog)[0]["path"]
    response = client.post(f"/search?k={k}", files={"image": ("a.jpg", photo.read_bytes())})
    assert response.status_code == 422
    assert "k" in json.dumps(response.json())


@pytest.mark.parametrize("payload", [
    b"this is plain text, not a photo",
    b"<html><body>hello</body></html>",
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    b"PK\x03\x04" + b"\x00" * 40,
    b"",
])
def test_not_an_image_is_400_and_server_stays_up(client, payload):
    response = client.post("/search", files={"image": ("photo.jpg", payload, "image/jpeg")})
    assert response.status_code == 400
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_truncated_jpeg_is_400(client, synthetic_catalog):
    photo = (synthetic_catalog.parent / _catalog_rows(synthetic_catalog)[0]["path"]).read_bytes()
    response = client.post("/search", files={"image": ("cut.jpg", photo[: len(photo) // 3])})
    assert response.status_code == 400
    assert "truncated" in response.json()["detail"] or "corrupt" in response.json()["detail"]


def test_missing_field_is_422(client, synthetic_catalog):
    photo = (synthetic_catalog.parent / _catalog_rows(synthetic_catalog)[0]["path"]).read_bytes()
    assert client.post("/search", files={"picture": ("a.jpg", photo)}).status_code == 422
    assert client.post("/search").status_code == 422


def test_upload_over_the_limit_is_413(client):
    response = client.post("/search", files={"image": ("big.jpg", b"\xff" * 300_000, "image/jpeg")})
    assert response.status_code == 413
    assert "200000" in response.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_chunked_upload_over_the_limit_is_413(client):
    def chunks():  # a well-formed multipart upload, streamed without a Content-Length
        yield b'--abc\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
        yield b"Content-Type: image/jpeg\r\n\r\n"
        for _ in range(40):
            yield b"\xff" * 10_000
        yield b"\r\n--abc--\r\n"

    response = client.post("/search", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=abc"})
    assert response.status_code == 413


def test_item_metadata_and_image(client, synthetic_catalog):
    row = _catalog_rows(synthetic_catalog)[2]
    item = client.get(f"/items/{row['item_id']}").json()
    assert item["item_id"] == row["item_id"] and item["colour"] == row["colour"]
    assert item["image_count"] == 2
    image = client.get(item["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (96, 96)


@pytest.mark.parametrize("item_id", ["nope", "%2E%2E", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"])
def test_unknown_items_are_404(client, item_id):
    assert client.get(f"/items/{item_id}").status_code == 404
    assert client.get(f"/items/{item_id}/image").status_code == 404


def test_healthz_and_docs(client, tiny_checkpoint):
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["index"]["vectors"] == 24 and health["index"]["items"] == 12
    assert health["model"]["spec"] == str(tiny_checkpoint.resolve()) and health["model"]["dim"] == 32
    assert client.get("/docs").status_code == 200
    assert "/search" in client.get("/openapi.json").json()["paths"]


def _copy_index(tiny_index: Path, tmp_path: Path) -> Path:
    version = resolve_version_dir(tiny_index)
    copy = tmp_path / "copy"
    shutil.copytree(version, copy)
    return copy


def test_index_built_with_other_weights_is_refused(tiny_index, tmp_path):
    index = _copy_index(tiny_index, tmp_path)
    edit_manifest(index, lambda m: m["model"].update(checksum="0" * 64))
    with pytest.raises(IncompatibleIndexError, match="not the model"):
        SearchEngine.load(index, device="cpu")


def test_index_with_other_preprocessing_is_refused(tiny_index, tmp_path):
    index = _copy_index(tiny_index, tmp_path)
    edit_manifest(index, lambda m: m["preprocessing"].update(input_size=128))
    with pytest.raises(IncompatibleIndexError, match="preprocesses"):
        SearchEngine.load(index, device="cpu")


def test_model_of_another_dim_is_refused(tiny_index, tmp_path):
    with pytest.raises(IncompatibleIndexError, match="32-dim"):
        SearchEngine.load(tiny_index, model_spec="resnet18:none", device="cpu")


def test_settings_from_environment():
    settings = Settings.from_env({"SNAP2SHOP_PORT": "9001", "SNAP2SHOP_MAX_UPLOAD_BYTES": "5000",
                                  "SNAP2SHOP_INDEX": "/srv/idx"}, host="0.0.0.0")
    assert (settings.port, settings.max_upload_bytes, settings.index, settings.host) == (9001, 5000, Path("/srv/idx"), "0.0.0.0")
    with pytest.raises(ValueError, match="SNAP2SHOP_PORT"):
        Settings.from_env({"SNAP2SHOP_PORT": "eighty"})
    assert Settings.from_env({"SNAP2SHOP_TORCH_THREADS": "3"}).torch_threads == 3
    with pytest.raises(ValueError, match="torch_threads cannot be negative"):
        Settings.from_env({"SNAP2SHOP_TORCH_THREADS": "-1"})


def test_byte_identical_photos_of_two_items_tie_deterministically(tmp_path, tiny_checkpoint, synthetic_catalog):
    from indexer.build import BuildOptions, build_index
    from indexer.manifest import read_manifest

    rows = _catalog_rows(synthetic_catalog)
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = (synthetic_catalog.parent / rows[0]["path"]).read_bytes()
    (folder / "b-twin.jpg").write_bytes(photo)
    (folder / "a-twin.jpg").write_bytes(photo)
    for row in rows[2:8]:
        shutil.copy(synthetic_catalog.parent / row["path"], folder / Path(row["path"]).name)
    version = build_index(BuildOptions(out=tmp_path / "idx", images=folder, model_spec=str(tiny_checkpoint),
                                       device="cpu", workers=0, progress=False))
    _, manifest = read_manifest(version)
    assert manifest.duplicate_photo_groups == [["a-twin", "b-twin"]]
    engine = SearchEngine.load(tmp_path / "idx", device="cpu")
    for _ in range(3):
        hits, _ = engine.search(photo, k=3)
        assert [h.item_id for h in hits[:2]] == ["a-twin", "b-twin"]
        assert hits[0].score == pytest.approx(hits[1].score, abs=1e-6)


def test_default_k_comes_from_settings(tiny_index, synthetic_catalog):
    photo = (synthetic_catalog.parent / _catalog_rows(synthetic_catalog)[0]["path"]).read_bytes()
    app = create_app(Settings(index=tiny_index, device="cpu", default_k=4, max_k=6))
    with TestClient(app) as client:
        assert len(client.post("/search", files={"image": ("a.jpg", photo)}).json()["results"]) == 4
        assert client.post("/search?k=7", files={"image": ("a.jpg", photo)}).status_code == 422
