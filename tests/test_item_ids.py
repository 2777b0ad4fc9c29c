"""Item ids with `/`, `%`, spaces and non-ASCII letters, through /items, /items/.../image and /search."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path
from urllib.parse import quote

import httpx2
import pytest
from fastapi.testclient import TestClient

from demo.synth import generate_catalog
from service.app import create_app
from service.settings import Settings

# "a/b" and "a/b/image" together: the one pair the photo route's rule has to keep apart.
ODD_IDS = ["women/dress-12", "50%off", "blue shirt", "jupe-été", "a/b/image", "a/b", "image"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> dict[str, Path]:
    """item id -> its one photo, in a catalogue CSV whose ids are ODD_IDS."""
    root = tmp_path_factory.mktemp("odd-ids")
    generated = generate_catalog(root / "generated", n_items=len(ODD_IDS), photos_per_item=1, size=96, seed=3)
    with generated.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    photos = {}
    with (root / "catalog.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "item_id", "category", "title"])
        for item_id, row in zip(ODD_IDS, rows):
            rel = f"photos/{len(photos)}.jpg"
            (root / "photos").mkdir(exist_ok=True)
            shutil.copyfile(generated.parent / row["path"], root / rel)
            writer.writerow([rel, item_id, row["category"], f"title of {item_id}"])
            photos[item_id] = root / rel
    return photos


@pytest.fixture(scope="module")
def odd_index(tmp_path_factory, tiny_checkpoint, shop) -> Path:
    from indexer.build import BuildOptions, build_index

    out = tmp_path_factory.mktemp("odd-index") / "idx"
    csv_path = next(iter(shop.values())).parent.parent / "catalog.csv"
    build_index(BuildOptions(out=out, catalog=csv_path, model_spec=str(tiny_checkpoint),
                             batch_size=8, device="cpu", workers=0, progress=False))
    return out


@pytest.fixture(scope="module")
def client(odd_index):
    with TestClient(create_app(Settings(index=odd_index, device="cpu", reload_poll_s=0))) as test_client:
        yield test_client


def _escaped(item_id: str) -> str:
    return quote(item_id, safe="")


@pytest.mark.parametrize("item_id", ODD_IDS)
def test_metadata_and_image_url_of_every_id(client, shop, item_id):
    response = client.get(f"/items/{_escaped(item_id)}")
    assert response.status_code == 200, response.text
    item = response.json()
    assert item["item_id"] == item_id and item["title"] == f"title of {item_id}" and item["image_count"] == 1
    assert item["image_url"] == f"/items/{_escaped(item_id)}/image"
    image = client.get(item["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == shop[item_id].read_bytes()


@pytest.mark.parametrize("item_id", ODD_IDS)
def test_search_result_image_urls_answer(client, shop, item_id):
    photo = shop[item_id].read_bytes()
    response = client.post("/search", files={"image": ("q.jpg", photo, "image/jpeg")}, params={"k": 3})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["item_id"] == item_id
    for result in results:
        image = client.get(result["image_url"])
        assert image.status_code == 200 and image.content == shop[result["item_id"]].read_bytes()


def test_unescaped_slashes_work_too(client, shop):
    assert client.get("/items/women/dress-12").json()["item_id"] == "women/dress-12"
    assert client.get("/items/women/dress-12/image").content == shop["women/dress-12"].read_bytes()


def test_an_id_ending_in_image_is_told_apart_by_how_its_slash_is_sent(client, shop):
    # A literal trailing /image is the photo of the id before it...
    assert client.get("/items/a/b/image").content == shop["a/b"].read_bytes()
    # ...an escaped one is the id's own last segment.
    for url in ("/items/a%2Fb%2Fimage", "/items/a/b%2Fimage"):
        response = client.get(url)
        assert response.status_code == 200 and response.json()["item_id"] == "a/b/image", url
    for url in ("/items/a%2Fb%2Fimage/image", "/items/a/b/image/image"):
        assert client.get(url).content == shop["a/b/image"].read_bytes(), url
    # The id "image" itself: /items/image is its metadata, /items/image/image its photo.
    assert client.get("/items/image").json()["item_id"] == "image"
    assert client.get("/items/image/image").content == shop["image"].read_bytes()


@pytest.mark.parametrize("url", ["/items/women%2Fdress-99", "/items/women%2Fdress-99/image", "/items/50%25",
                                 "/items/50%25/image", "/items/blue%20shirt%20", "/items/jupe-ete/image",
                                 "/items/women", "/items/women/image", "/items/", "/items//image",
                                 "/items/..%2F..%2Fetc%2Fpasswd/image"])
def test_unknown_ids_are_404(client, url):
    response = client.get(url)
    assert response.status_code == 404 and "no item" in response.json()["detail"]


def test_a_literal_image_suffix_on_a_missing_prefix_explains_the_escape(odd_index, tmp_path):
    # "a/b/image" exists; with "a/b" gone from the index, /items/a/b/image finds no photo and says why.
    from indexer.remove import remove_items

    from .test_indexer import _copy_index

    copy = _copy_index(odd_index, tmp_path / "idx")
    remove_items(copy, ["a/b"])
    with TestClient(create_app(Settings(index=copy, device="cpu", reload_poll_s=0))) as client:
        response = client.get("/items/a/b/image")
        assert response.status_code == 404 and "escape its slashes as %2F" in response.json()["detail"]
        assert client.get("/items/a%2Fb%2Fimage").json()["item_id"] == "a/b/image"


def test_openapi_documents_both_routes_and_the_rule(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/items/{item_id}" in paths and "/items/{item_id}/image" in paths
    assert "%2F" in paths["/items/{item_id}/image"]["get"]["description"]


def test_a_real_server_keeps_escaped_slashes_apart(odd_index, shop):
    """uvicorn, not the test client, fills in raw_path: the rule must hold there too."""
    from .live_server import serve_in_thread

    app = create_app(Settings(index=odd_index, device="cpu", reload_poll_s=0))
    with serve_in_thread(app) as base, httpx2.Client(base_url=base) as http:
        assert http.get("/items/a%2Fb%2Fimage").json()["item_id"] == "a/b/image"
        assert http.get("/items/a%2Fb%2Fimage/image").content == shop["a/b/image"].read_bytes()
        assert http.get("/items/a/b/image").content == shop["a/b"].read_bytes()
        assert http.get("/items/50%25off/image").content == shop["50%off"].read_bytes()
