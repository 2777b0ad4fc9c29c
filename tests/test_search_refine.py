"""Refining a search: a box around the garment, and a category filter that still returns k items."""
from __future__ import annotations

import csv
import io
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def client(tiny_index):
    with TestClient(create_app(Settings(index=tiny_index, device="cpu"))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def rows(synthetic_catalog) -> list[dict]:
    with synthetic_catalog.open() as handle:
        return list(csv.DictReader(handle))


def _jpeg(img: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=95, **save)
    return buffer.getvalue()


def _scene(target: Image.Image, other: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A 'street photo' holding two garments side by side; returns it and the target's box."""
    scene = Image.new("RGB", (300, 140), (90, 110, 70))
    scene.paste(other, (10, 20))
    scene.paste(target, (180, 30))
    return scene, (180, 30, 180 + target.width, 30 + target.height)


def _search(client, data: bytes, **params):
    return client.post("/search", params=params, files={"image": ("p.jpg", data, "image/jpeg")})


def test_box_around_the_garment_finds_it(client, synthetic_catalog, rows):
    target, other = rows[0], rows[6]
    scene, box = _scene(Image.open(synthetic_catalog.parent / target["path"]),
                        Image.open(synthetic_catalog.parent / other["path"]))
    data = _jpeg(scene)
    boxed = _search(client, data, k=3, box=",".join(map(str, box))).json()["results"]
    assert boxed[0]["item_id"] == target["item_id"]
    assert boxed[0]["score"] > 0.95
    # without the box the same photo is a different query altogether
    whole = _search(client, data, k=3).json()["results"]
    assert whole[0]["score"] < boxed[0]["score"]


def test_box_is_applied_after_exif_rotation(client, synthetic_catalog, rows):
    target = rows[2]
    scene, box = _scene(Image.open(synthetic_catalog.parent / target["path"]),
                        Image.open(synthetic_catalog.parent / rows[8]["path"]))
    # A phone stores the sensor's pixels and an Orientation tag; viewers show it upright. Store the
    # upright scene rotated by 90° with Orientation=6 ("rotate 90° clockwise to display").
    stored = scene.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    upright_result = _search(client, _jpeg(scene), k=1, box=",".join(map(str, box))).json()["results"][0]
    rotated_result = _search(client, _jpeg(stored, exif=exif), k=1, box=",".join(map(str, box))).json()["results"][0]
    assert rotated_result["item_id"] == upright_result["item_id"] == target["item_id"]
    assert rotated_result["score"] == pytest.approx(upright_result["score"], abs=0.02)


@pytest.mark.parametrize("box, message", [
    ("1,2,3", "four numbers"),
    ("a,b,c,d", "four numbers"),
    ("10,10,5,50", "x0 < x1"),
    ("10,10,50,10", "y0 < y1"),
    ("nan,0,10,10", "finite"),
    ("0,0,5000,50", "outside the 96x96 photo"),
    ("-5,0,50,50", "outside"),
    ("10,10,12,12", "at least 8x8"),
])
def test_bad_boxes_are_422_with_a_reason(client, synthetic_catalog, rows, box, message):
    data = (synthetic_catalog.parent / rows[0]["path"]).read_bytes()
    response = _search(client, data, box=box)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_category_filter_returns_k_items_of_that_category(client, synthetic_catalog, rows):
    counts = Counter(r["category"] for r in {r["item_id"]: r for r in rows}.values())
    query = rows[0]
    rare = min((c for c in counts if c != query["category"]), key=lambda c: counts[c])
    data = (synthetic_catalog.parent / query["path"]).read_bytes()
    unfiltered = _search(client, data, k=counts[rare]).json()["results"]
    filtered = _search(client, data, k=counts[rare], category=rare).json()["results"]
    assert {r["category"] for r in filtered} == {rare}
    assert len(filtered) == counts[rare]  # all of them, not the few in the unfiltered top k
    assert [r["category"] for r in unfiltered].count(rare) < counts[rare]
    assert [r["score"] for r in filtered] == sorted((r["score"] for r in filtered), reverse=True)


def test_category_filter_asking_for_more_than_exist_returns_all_of_them(client, synthetic_catalog, rows):
    counts = Counter(r["category"] for r in {r["item_id"]: r for r in rows}.values())
    category, n = counts.most_common(1)[0]
    data = (synthetic_catalog.parent / rows[3]["path"]).read_bytes()
    results = _search(client, data, k=50, category=category).json()["results"]
    assert len(results) == n and len({r["item_id"] for r in results}) == n


def test_unknown_category_gives_no_results(client, synthetic_catalog, rows):
    data = (synthetic_catalog.parent / rows[0]["path"]).read_bytes()
    response = _search(client, data, category="spacesuit")
    assert response.status_code == 200 and response.json()["results"] == []


def test_categories_endpoint_counts_items(client, rows):
    expected = Counter(r["category"] for r in {r["item_id"]: r for r in rows}.values())
    body = client.get("/categories").json()
    assert body["field"] == "category"
    assert {v["value"]: v["items"] for v in body["values"]} == dict(expected)
    counts = [v["items"] for v in body["values"]]
    assert counts == sorted(counts, reverse=True)


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW16"])
def test_category_filter_works_on_approximate_indexes(tmp_path, tiny_checkpoint, synthetic_catalog, rows, factory):
    from indexer.build import BuildOptions, build_index

    build_index(BuildOptions(out=tmp_path / "idx", catalog=synthetic_catalog, model_spec=str(tiny_checkpoint),
                             index_factory=factory, device="cpu", workers=0, progress=False))
    counts = Counter(r["category"] for r in {r["item_id"]: r for r in rows}.values())
    category, n = counts.most_common(1)[0]
    with TestClient(create_app(Settings(index=tmp_path / "idx", device="cpu"))) as approx:
        data = (synthetic_catalog.parent / rows[1]["path"]).read_bytes()
        results = _search(approx, data, k=n, category=category).json()["results"]
    assert {r["category"] for r in results} == {category}
    assert len(results) == n
