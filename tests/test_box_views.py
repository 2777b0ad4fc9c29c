"""Mask-box view sets (`adapt --box-views`): synthesised views cropped at the box of the synthesiser's
own mask, with no frame pass to find the garment, and how adapt mixes them with located view sets."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.adapted_head import garment_boxes
from model.config import Preprocessing
from model.garment_crop import crop_photo
from model.training.adapt import AdaptConfig, adapt
from model.training.adapt_data import MaskBoxCrops, Row
from model.training.data import Photo

from .test_adapt import FAST, _run_cli, make_shop


class _Placed:
    """A 'synthesiser' that puts a red square at a known place on grey and returns its exact mask."""

    def __init__(self, box: tuple[int, int, int, int], size: tuple[int, int] = (400, 300)) -> None:
        self.box, self.size = box, size

    def compose(self, shop: Image.Image, rng: random.Random) -> tuple[Image.Image, Image.Image]:
        view, mask = Image.new("RGB", self.size, (120, 120, 120)), Image.new("L", self.size, 0)
        view.paste((200, 30, 30), self.box)
        mask.paste(255, self.box)
        return view, mask


@pytest.fixture()
def one_row(tmp_path) -> list[Row]:
    path = tmp_path / "shop.jpg"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(path)
    return [Row(Photo(path, "item-1", "shop", "train"), synth_seed=11)]


def test_without_jitter_the_crop_is_the_located_rule_applied_to_the_exact_mask(one_row):
    prep, frame = Preprocessing(input_size=64), 96
    synth = _Placed((100, 60, 220, 200))
    got = MaskBoxCrops(one_row, prep, synth, frame, margin=0.1, jitter=(0.0, 0.0, 0.0))[0]
    assert got["ok"] and not got["has_mask"] and got["tensor"].shape == (3, 64, 64)
    # the same rule on the mask letterboxed into the query frame, by hand
    grid = frame // 8
    canvas = np.zeros((grid, grid), np.float32)
    content_h = round(300 * grid / 400)
    top = (grid - content_h) // 2
    canvas[top:top + content_h] = np.asarray(synth.compose(None, None)[1].resize((grid, content_h)), np.float32) / 255
    box = garment_boxes(torch.from_numpy(canvas)[None, None], 0.1)[0].numpy()
    view = synth.compose(None, None)[0]
    torch.testing.assert_close(got["tensor"], crop_photo(view, box, frame, prep))
    # the crop is mostly the red square: the garment fills it, the grey street does not
    red = got["tensor"][0] > got["tensor"][1] + 1.0
    assert red.float().mean() > 0.5


def test_jitter_moves_the_box_the_same_way_for_the_same_row_and_never_fails(one_row):
    prep = Preprocessing(input_size=64)
    synth = _Placed((100, 60, 220, 200))
    still = MaskBoxCrops(one_row, prep, synth, 96, margin=0.1, jitter=(0.0, 0.0, 0.0))[0]["tensor"]
    moved = MaskBoxCrops(one_row, prep, synth, 96, margin=0.1, jitter=(0.2, -0.1, 0.3))
    assert not torch.allclose(moved[0]["tensor"], still)
    torch.testing.assert_close(moved[0]["tensor"], moved[0]["tensor"])  # a row is the same crop every time


def test_an_unreadable_shop_photo_is_a_flagged_row_not_an_exception(tmp_path):
    from model.synthesis import ConsumerViewSynthesizer

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    rows = [Row(Photo(broken, "item-1", "shop", "train"), synth_seed=3)]
    got = MaskBoxCrops(rows, Preprocessing(input_size=64), ConsumerViewSynthesizer(), 96, 0.1, (0.05, -0.1, 0.1))[0]
    assert not got["ok"] and "broken.jpg" in got["error"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    return make_shop(tmp_path_factory.mktemp("shop24b"), items=24, seed=8)


def test_adapt_with_a_mask_box_view_set_skips_its_frame_pass_and_uses_its_crops(shop, tmp_path):
    from model import load_model

    out, cache = tmp_path / "a.safetensors", tmp_path / "cache"
    adapt(AdaptConfig(data=shop, format="catalog", out=out, cache=cache, box_views=1,
                      **FAST | {"views": 2, "tune_blocks": 1, "tune_epochs": 1}))
    report = json.loads(out.with_name("a.adapt.json").read_text())
    assert report["views"] == 48 and report["box_views"] == 1 and "box_views_s" in report["timings"]
    assert len(list(cache.glob("views-*"))) == 1  # one located set: one frame pass
    assert len(list(cache.glob("boxcrops-*"))) == 1 and len(list(cache.glob("crops-*"))) == 1
    # the tuned tail trained on both sets' trunk activations
    assert report["tuning"] is not None and len(list(cache.glob("trunk-*"))) == 3
    # the held-out check re-crops the located set's views only; none of its items' views fits the projection
    from model.training.adapt_fit import held_out_items

    assert report["context"]["queries"] == held_out_items(24).sum() > 0  # one located view per held-out item
    loaded = load_model(str(out))
    query, boxes = loaded.model.encode_query(torch.rand(2, 3, 96, 96))
    assert query.shape == (2, loaded.model.embedding_dim) and boxes.shape == (2, 4)
    # a rerun finds every part cached (the mask-box crops too: no shard is written again), same head
    shards = {p: p.stat().st_mtime_ns for p in cache.glob("boxcrops-*/shard-*.npz")}
    again = tmp_path / "b.safetensors"
    adapt(AdaptConfig(data=shop, format="catalog", out=again, cache=cache, box_views=1,
                      **FAST | {"views": 2, "tune_blocks": 1, "tune_epochs": 1}))
    assert shards and {p: p.stat().st_mtime_ns for p in cache.glob("boxcrops-*/shard-*.npz")} == shards
    assert load_model(str(again)).checksum == loaded.checksum


@pytest.mark.parametrize("args, words", [
    (["--views", "2", "--box-views", "2"], "--box-views"),
    (["--views", "2", "--box-views", "1", "--no-locate"], "--box-views"),
    (["--box-views", "-1"], "--box-views"),
])
def test_nonsense_box_views_exit_2_with_one_line(shop, tmp_path, args, words):
    result = _run_cli("adapt", "--data", str(shop), "--format", "catalog", "--out", str(tmp_path / "a.safetensors"),
                      "--cache", str(tmp_path / "cache"), *args)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert not list(tmp_path.glob("*.safetensors"))
