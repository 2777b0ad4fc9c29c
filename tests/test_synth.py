"""Behavioural tests for the synthetic catalogue generator (demo/synth.py)."""
import csv
import random

import numpy as np
import pytest
from PIL import Image

from demo import synth


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_generate_catalog_writes_images_and_csv(tmp_path):
    csv_path = synth.generate_catalog(tmp_path / "cat", n_items=5, photos_per_item=2, size=64, seed=3)

    assert csv_path == tmp_path / "cat" / "catalog.csv"
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "item_id", "category", "title", "colour", "pattern"]
        rows = list(reader)
    assert len(rows) == 10
    assert {r["item_id"] for r in rows} == {f"sku-{i:04d}" for i in range(1, 6)}
    assert rows[0]["path"] == "images/sku-0001_0.jpg"
    for row in rows:
        assert row["category"] in synth.GARMENT_KINDS
        assert row["pattern"] in synth.PATTERNS
        with Image.open(csv_path.parent / row["path"]) as img:
            assert img.size == (64, 64) and img.mode == "RGB"


def test_catalog_items_are_distinct_and_seeded(tmp_path):
    def rows(out, seed):
        with synth.generate_catalog(out, n_items=40, size=32, seed=seed).open(newline="") as fh:
            return [(r["category"], r["colour"], r["pattern"]) for r in csv.DictReader(fh)]

    first = rows(tmp_path / "a", 0)
    assert len(set(first)) == 40
    assert len({kind for kind, _, _ in first}) == len(synth.GARMENT_KINDS)
    assert rows(tmp_path / "b", 0) == first
    assert rows(tmp_path / "c", 1) != first


def test_render_item_is_deterministic():
    spec = synth.random_item(random.Random(7), "sku-0001")
    for view in (0, 1):
        a = synth.render_item(spec, size=64, view=view)
        b = synth.render_item(spec, size=64, view=view)
        assert a.mode == "RGB" and a.size == (64, 64)
        assert np.array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(synth.render_item(spec, size=64, view=0)),
                              _pixels(synth.render_item(spec, size=64, view=1)))


def test_photo_is_garment_on_light_background():
    spec = synth.random_item(random.Random(1), "sku-0001")
    px = _pixels(synth.render_item(spec, size=64))
    assert px[0, 0].min() > 225 and px[-1, -1].min() > 220  # corners are studio backdrop
    assert np.abs(px - px[0, 0]).sum(axis=2).max() > 60  # and something is drawn in the middle


@pytest.mark.parametrize("kind", synth.GARMENT_KINDS)
def test_every_kind_renders(kind):
    spec = synth.ItemSpec("sku-0001", kind, "navy", synth.COLOURS["navy"], "polka-dots",
                          synth.COLOURS["ivory"], "Navy Polka-Dot Thing")
    px = _pixels(synth.render_item(spec, size=48))
    assert (np.abs(px - px[0, 0]).sum(axis=2) > 60).mean() > 0.05


def test_different_items_differ():
    a = synth.ItemSpec("sku-0001", "t-shirt", "red", synth.COLOURS["red"], "solid", synth.COLOURS["red"], "Red T-Shirt")
    b = synth.ItemSpec("sku-0002", "trousers", "navy", synth.COLOURS["navy"], "gingham", synth.COLOURS["ivory"],
                       "Navy & Ivory Gingham Trousers")
    diff = np.abs(_pixels(synth.render_item(a, size=64)) - _pixels(synth.render_item(b, size=64)))
    assert diff.mean() > 10


def test_street_view_alters_but_keeps_plausible_size():
    spec = synth.random_item(random.Random(2), "sku-0001")
    img = synth.render_item(spec, size=96)
    for seed in range(5):
        alt = synth.street_view(img, random.Random(seed))
        assert alt.mode == "RGB"
        assert 0.75 * 96 - 1 <= alt.width <= 96 and 0.75 * 96 - 1 <= alt.height <= 96
        same_size = alt.resize(img.size)
        assert np.abs(_pixels(same_size) - _pixels(img)).mean() > 2
    assert np.array_equal(_pixels(synth.street_view(img, random.Random(9))),
                          _pixels(synth.street_view(img, random.Random(9))))
