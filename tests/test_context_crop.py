"""The query side's context crop (AdapterConfig.context_widen): what a located query is embedded from,
and how `adapt` decides on held-out items whether it ships."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.adapted_head import widen_boxes
from model.config import AdapterConfig, EmbedderConfig
from model.training.adapt import AdaptConfig, adapt
from model.training.adapt_context import score_context

from .test_adapt import FAST, make_shop


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_widened_box_keeps_its_centre_and_scales_its_sides():
    boxes = torch.tensor([[0.2, 0.3, 0.6, 0.5], [0.0, 0.0, 1.0, 1.0]])
    wide = widen_boxes(boxes, 1.5)
    torch.testing.assert_close((wide[:, :2] + wide[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2)
    torch.testing.assert_close(wide[:, 2:] - wide[:, :2], (boxes[:, 2:] - boxes[:, :2]) * 1.5)
    torch.testing.assert_close(widen_boxes(boxes, 1.0), boxes)


def test_checkpoints_made_before_the_setting_embed_the_crop_alone():
    old = {"dim": 16, "foreground": True, "locate": True, "crop_margin": 0.1, "gem_p": 3.0, "residual": True}
    assert AdapterConfig.from_dict(old).context_widen == 1.0
    config = AdapterConfig(dim=16, context_widen=1.3)
    assert EmbedderConfig.from_dict(EmbedderConfig(adapter=config).to_dict()).adapter.context_widen == 1.3
    for bad in (0.9, 4.5):
        with pytest.raises(ValueError, match="context_widen"):
            AdapterConfig(dim=16, context_widen=bad)


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    """24 items: enough that adapt holds some out (held_out_items needs 20)."""
    return make_shop(tmp_path_factory.mktemp("shop24"), items=24, seed=5)


def _adapt(shop: Path, out: Path, context_widen: float = 1.5) -> dict:
    """A frozen-backbone adapt of one view per item (the cache beside `out`) -> its report."""
    adapt(AdaptConfig(data=shop, format="catalog", out=out, cache=out.parent / "cache", context_widen=context_widen,
                      **FAST | {"views": 1, "tune_blocks": 0}))
    return json.loads(out.with_name(out.stem + ".adapt.json").read_text())


@pytest.fixture(scope="module")
def adapted(shop, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ctx") / "a.safetensors"
    _adapt(shop, out)
    return out


def _with_widen(model, widen: float):
    """The same weights, a config whose adapter widens by `widen`."""
    from dataclasses import replace

    model.adapter.config = replace(model.adapter.config, context_widen=widen)
    return model


def test_a_located_query_is_the_normalised_mean_of_its_crop_and_its_widened_crop(adapted):
    from PIL import Image

    from model import load_model
    from model.garment_crop import crop_photos
    from model.inference import embed_query_batch, plan_inference
    from model.preprocessing import build_transform

    loaded = load_model(str(adapted))
    model, plan = _with_widen(loaded.model.eval(), 1.5), plan_inference(torch.device("cpu"))
    rng = np.random.default_rng(2)
    photos = [Image.fromarray(rng.integers(0, 255, (300 + 50 * i, 400, 3), dtype=np.uint8)) for i in range(2)]
    tensor = torch.stack([build_transform(loaded.config.query_prep)(p) for p in photos])
    prep, size = loaded.config.preprocessing, tensor.shape[-1]
    with torch.inference_mode():
        _, located = model.locate_garments(tensor)
        crop = model.embed_query_crops(crop_photos(photos, located.numpy(), size, prep)).numpy()
        wide_crops = crop_photos(photos, widen_boxes(located, 1.5).numpy(), size, prep)
        wide = model.embed_query_crops(wide_crops).numpy()
        crop_mirror = model.embed_query_crops(torch.flip(crop_photos(photos, located.numpy(), size, prep), [3])).numpy()
        wide_mirror = model.embed_query_crops(torch.flip(wide_crops, [3])).numpy()
    vectors, boxes = embed_query_batch(model, tensor, plan, photos=photos)
    np.testing.assert_allclose(vectors, _unit(crop + wide), atol=1e-5)
    assert not np.allclose(vectors, crop, atol=1e-3)
    np.testing.assert_allclose(boxes, located.numpy(), atol=1e-6)  # the region shown is the garment's own box
    flipped, _ = embed_query_batch(model, tensor, plan, flip=True, photos=photos)
    np.testing.assert_allclose(flipped, _unit(crop + wide + crop_mirror + wide_mirror), atol=1e-5)

    from model.adapted_head import crop_boxes

    def tensor_crop(boxes):
        return model.embed_query_crops(crop_boxes(tensor, boxes, prep.input_size)).numpy()

    with torch.inference_mode():  # the tensor path (no photos at hand) widens the same way
        from_tensor, tensor_boxes = model.encode_query(tensor)
        expected = _unit(tensor_crop(located) + tensor_crop(widen_boxes(located, 1.5)))
    np.testing.assert_allclose(from_tensor.numpy(), expected, atol=1e-5)
    torch.testing.assert_close(tensor_boxes, located)

    alone, _ = embed_query_batch(_with_widen(model, 1.0), tensor, plan, photos=photos)
    np.testing.assert_allclose(alone, crop, atol=1e-5)


def test_score_context_gains_when_the_widened_crop_carries_independent_evidence():
    rng = np.random.default_rng(0)
    items, dim = np.array([f"i{n:03d}" for n in range(200)]), 32
    catalog = rng.normal(size=(200, dim)).astype(np.float32)
    fit = np.arange(200) >= 40  # items 0-39 held out
    fit_q = catalog[fit] + rng.normal(scale=0.3, size=(160, dim)).astype(np.float32)
    noise = 1.6
    crop = catalog[:40] + rng.normal(scale=noise, size=(40, dim)).astype(np.float32)
    wide = catalog[:40] + rng.normal(scale=noise, size=(40, dim)).astype(np.float32)
    gained = score_context(fit_q, items[fit], crop, wide, items[:40], catalog, items, fit, dim=dim, head="whiten")
    assert gained["queries"] == 40
    assert gained["context"]["top1"] > gained["crop"]["top1"]
    same = score_context(fit_q, items[fit], crop, crop, items[:40], catalog, items, fit, dim=dim, head="whiten")
    assert same["context"] == same["crop"]  # the mean of a vector with itself is that vector
    street = rng.normal(scale=3.0, size=(40, dim)).astype(np.float32)  # a widened crop of nothing but street
    lost = score_context(fit_q, items[fit], crop, street, items[:40], catalog, items, fit, dim=dim, head="whiten")
    assert lost["context"]["top1"] < lost["crop"]["top1"]


def test_adapt_scores_the_context_crop_on_held_out_views_and_records_what_ships(adapted):
    from model import load_model

    report = json.loads(adapted.with_name("a.adapt.json").read_text())
    context = report["context"]
    assert context["widen"] == 1.5 and 0 < context["queries"] < report["views"]
    better = context["context"]["top1"] >= context["crop"]["top1"]
    assert context["shipped"] == (1.5 if better else 1.0)
    assert load_model(str(adapted)).config.adapter.context_widen == context["shipped"]
    assert "context_s" in report["timings"]
    assert list(adapted.parent.glob("cache/context-*/shard-*.npz"))


def test_the_crop_alone_ships_when_held_out_items_lose_with_the_context(shop, adapted, monkeypatch):
    import model.training.adapt_context as context_module
    from model import load_model

    monkeypatch.setattr(context_module, "score_context", lambda *a, **k: {
        "queries": 3, "crop": {"top1": 0.5, "top20": 1.0}, "context": {"top1": 0.4, "top20": 1.0}})
    out = adapted.parent / "lost.safetensors"
    assert _adapt(shop, out)["context"]["shipped"] == 1.0
    assert load_model(str(out)).config.adapter.context_widen == 1.0


def test_context_off_means_no_context_pass(shop, tmp_path):
    from model import load_model

    out = tmp_path / "off.safetensors"
    report = _adapt(shop, out, context_widen=1.0)
    assert report["context"] is None and "context_s" not in report["timings"]
    assert load_model(str(out)).config.adapter.context_widen == 1.0
    assert not list((tmp_path / "cache").glob("context-*"))


def test_indexer_info_says_whether_the_query_side_embeds_a_context_box():
    from indexer.__main__ import _describe_query_head

    assert "garment crop + 1.4x context" in _describe_query_head(AdapterConfig(dim=16, context_widen=1.4))
    plain = _describe_query_head(AdapterConfig(dim=16))
    assert "garment crop" in plain and "context" not in plain
