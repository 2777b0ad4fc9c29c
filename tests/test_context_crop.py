"""What a located query is embedded from besides its garment crop: the context crop
(AdapterConfig.context_widen) and the whole frame (AdapterConfig.frame_weight), and how `adapt`
decides on held-out items whether each ships."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.adapted_head import widen_boxes
from model.config import AdapterConfig, EmbedderConfig
from model.training.adapt import AdaptConfig, adapt
from model.training.adapt_context import chosen_terms, score_context

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
    assert AdapterConfig.from_dict(old).frame_weight == 0.0
    config = AdapterConfig(dim=16, frame_weight=0.75)
    assert EmbedderConfig.from_dict(EmbedderConfig(adapter=config).to_dict()).adapter.frame_weight == 0.75
    for bad in (-0.1, 2.5):
        with pytest.raises(ValueError, match="frame_weight"):
            AdapterConfig(dim=16, frame_weight=bad)


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    """24 items: enough that adapt holds some out (held_out_items needs 20)."""
    return make_shop(tmp_path_factory.mktemp("shop24"), items=24, seed=5)


def _adapt(shop: Path, out: Path, context_widen: float = 1.5, frame_weight: float = 0.5) -> dict:
    """A frozen-backbone adapt of one view per item (the cache beside `out`) -> its report."""
    adapt(AdaptConfig(data=shop, format="catalog", out=out, cache=out.parent / "cache", context_widen=context_widen,
                      frame_weight=frame_weight, **FAST | {"views": 1, "tune_blocks": 0}))
    return json.loads(out.with_name(out.stem + ".adapt.json").read_text())


@pytest.fixture(scope="module")
def adapted(shop, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ctx") / "a.safetensors"
    _adapt(shop, out)
    return out


def _with_terms(model, widen: float, frame_weight: float = 0.0):
    """The same weights, a config whose adapter widens by `widen` and adds the frame at `frame_weight`."""
    from dataclasses import replace

    model.adapter.config = replace(model.adapter.config, context_widen=widen, frame_weight=frame_weight)
    return model


def test_a_located_query_is_the_normalised_mean_of_its_crop_and_its_widened_crop(adapted):
    from PIL import Image

    from model import load_model
    from model.garment_crop import crop_photos
    from model.inference import embed_query_batch, plan_inference
    from model.preprocessing import build_transform

    loaded = load_model(str(adapted))
    model, plan = _with_terms(loaded.model.eval(), 1.5), plan_inference(torch.device("cpu"))
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

    alone, _ = embed_query_batch(_with_terms(model, 1.0), tensor, plan, photos=photos)
    np.testing.assert_allclose(alone, crop, atol=1e-5)


def _held_out_problem(seed: int = 0, items: int = 200, held: int = 40, dim: int = 32):
    """Catalogue vectors, and noisy fit queries of the items after the first `held` (held out)."""
    rng = np.random.default_rng(seed)
    names = np.array([f"i{n:03d}" for n in range(items)])
    catalog = rng.normal(size=(items, dim)).astype(np.float32)
    fit = np.arange(items) >= held
    fit_q = catalog[fit] + rng.normal(scale=0.3, size=(items - held, dim)).astype(np.float32)
    return rng, names, catalog, fit, fit_q


def _noisy(rng, catalog, held: int = 40, scale: float = 1.6) -> np.ndarray:
    return catalog[:held] + rng.normal(scale=scale, size=(held, catalog.shape[1])).astype(np.float32)


def test_the_whole_frame_is_added_at_its_weight_from_the_map_the_garment_was_found_on(adapted):
    from PIL import Image

    from model import load_model
    from model.garment_crop import crop_photos
    from model.inference import embed_query_batch, plan_inference
    from model.preprocessing import build_transform

    loaded = load_model(str(adapted))
    model, plan = _with_terms(loaded.model.eval(), 1.5, frame_weight=0.7), plan_inference(torch.device("cpu"))
    rng = np.random.default_rng(3)
    photos = [Image.fromarray(rng.integers(0, 255, (320, 280 + 60 * i, 3), dtype=np.uint8)) for i in range(2)]
    tensor = torch.stack([build_transform(loaded.config.query_prep)(p) for p in photos])
    prep, size = loaded.config.preprocessing, tensor.shape[-1]
    with torch.inference_mode():
        fmap, located = model.locate_garments(tensor)
        frame = model.adapter.project(model.adapter.pool(fmap), "query").numpy()
        crops = [crop_photos(photos, b.numpy(), size, prep) for b in (located, widen_boxes(located, 1.5))]
        plain = sum(model.embed_query_crops(c).numpy() for c in crops)
        mirrored = sum(model.embed_query_crops(torch.flip(c, [3])).numpy() for c in crops)
    vectors, _ = embed_query_batch(model, tensor, plan, photos=photos)
    np.testing.assert_allclose(vectors, _unit(plain + 0.7 * frame), atol=1e-5)
    flipped, _ = embed_query_batch(model, tensor, plan, flip=True, photos=photos)
    # a crop and its mirror count half each: the frame's weight is against a crop either way
    np.testing.assert_allclose(flipped, _unit((plain + mirrored) / 2 + 0.7 * frame), atol=1e-5)
    from model.adapted_head import crop_boxes

    with torch.inference_mode():  # the tensor path (no photos at hand) adds the same frame
        from_tensor, _ = model.encode_query(tensor)
        tensor_crops = sum(model.embed_query_crops(crop_boxes(tensor, b, prep.input_size)).numpy()
                           for b in (located, widen_boxes(located, 1.5)))
    np.testing.assert_allclose(from_tensor.numpy(), _unit(tensor_crops + 0.7 * frame), atol=1e-5)
    without, _ = embed_query_batch(_with_terms(model, 1.5, 0.0), tensor, plan, photos=photos)
    np.testing.assert_allclose(without, _unit(plain), atol=1e-5)


def test_score_context_gains_when_the_widened_crop_carries_independent_evidence():
    rng, items, catalog, fit, fit_q = _held_out_problem()
    crop, wide = _noisy(rng, catalog), _noisy(rng, catalog)

    def score(held_wide):
        return score_context(fit_q, items[fit], crop, items[:40], catalog, items, fit, dim=32, head="whiten",
                             held_wide=held_wide)

    gained = score(wide)
    assert gained["queries"] == 40 and "frame" not in gained
    assert gained["context"]["top1"] > gained["crop"]["top1"]
    same = score(crop)
    assert same["context"] == same["crop"]  # the mean of a vector with itself is that vector
    lost = score(rng.normal(scale=3.0, size=(40, 32)).astype(np.float32))  # a widened crop of nothing but street
    assert lost["context"]["top1"] < lost["crop"]["top1"]
    assert "context" not in score(None)


def test_score_context_adds_the_whole_frame_at_its_weight_to_the_better_of_crop_and_context():
    rng, items, catalog, fit, fit_q = _held_out_problem(seed=1)
    crop, frame = _noisy(rng, catalog), _noisy(rng, catalog)
    street = rng.normal(scale=3.0, size=(40, 32)).astype(np.float32)

    def score(held_wide, held_frame, weight):
        return score_context(fit_q, items[fit], crop, items[:40], catalog, items, fit, dim=32, head="whiten",
                             held_wide=held_wide, held_frame=held_frame, frame_weight=weight)

    gained = score(None, frame, 1.0)
    assert gained["frame"]["top1"] > gained["crop"]["top1"]
    assert score(None, street, 0.5)["frame"]["top1"] < gained["crop"]["top1"]
    # The frame is added to the crop alone when the context crop lost: a street "context" is not kept.
    lost_context = score(street, frame, 1.0)
    assert lost_context["context"]["top1"] < lost_context["crop"]["top1"]
    assert lost_context["frame"] == gained["frame"]


def test_each_term_ships_where_held_out_items_did_not_lose_with_it():
    def scores(crop, context=None, frame=None):
        out = {"crop": {"top1": crop}}
        out |= {"context": {"top1": context}} if context is not None else {}
        return out | ({"frame": {"top1": frame}} if frame is not None else {})

    assert chosen_terms(scores(0.5, 0.6, 0.65), 1.4, 0.5) == (1.4, 0.5)
    assert chosen_terms(scores(0.5, 0.6, 0.55), 1.4, 0.5) == (1.4, 0.0)  # the frame lost against the context
    assert chosen_terms(scores(0.5, 0.4, 0.5), 1.4, 0.5) == (1.0, 0.5)   # a tie with the best keeps the frame
    assert chosen_terms(scores(0.5, 0.5), 1.4, 0.5) == (1.4, 0.0)        # no frame measured: none ships
    assert chosen_terms(scores(0.5, frame=0.6), 1.0, 0.5) == (1.0, 0.5)


def test_adapt_scores_the_context_crop_and_frame_on_held_out_views_and_records_what_ships(adapted):
    from model import load_model

    report = json.loads(adapted.with_name("a.adapt.json").read_text())
    context = report["context"]
    assert context["widen"] == 1.5 and context["frame_weight"] == 0.5 and 0 < context["queries"] < report["views"]
    assert {"crop", "context", "frame"} <= set(context)
    assert tuple(context["shipped"].values()) == chosen_terms(context, 1.5, 0.5)
    head = load_model(str(adapted)).config.adapter
    assert (head.context_widen, head.frame_weight) == (context["shipped"]["widen"], context["shipped"]["frame_weight"])
    assert "context_s" in report["timings"]
    assert list(adapted.parent.glob("cache/context-*/shard-*.npz"))
    assert list(adapted.parent.glob("cache/frames-*/shard-*.npz"))


def test_the_crop_alone_ships_when_held_out_items_lose_with_the_context_and_frame(shop, adapted, monkeypatch):
    import model.training.adapt_context as context_module
    from model import load_model

    monkeypatch.setattr(context_module, "score_context", lambda *a, **k: {
        "queries": 3, "crop": {"top1": 0.5, "top20": 1.0}, "context": {"top1": 0.4, "top20": 1.0},
        "frame": {"top1": 0.45, "top20": 1.0}})
    out = adapted.parent / "lost.safetensors"
    assert _adapt(shop, out)["context"]["shipped"] == {"widen": 1.0, "frame_weight": 0.0}
    head = load_model(str(out)).config.adapter
    assert (head.context_widen, head.frame_weight) == (1.0, 0.0)


def test_the_frame_alone_is_measured_when_the_context_crop_is_off(shop, adapted):
    out = adapted.parent / "frame-only.safetensors"
    context = _adapt(shop, out, context_widen=1.0)["context"]
    assert "frame" in context and "context" not in context and context["shipped"]["widen"] == 1.0


def test_both_terms_off_means_no_held_out_pass(shop, tmp_path):
    from model import load_model

    out = tmp_path / "off.safetensors"
    report = _adapt(shop, out, context_widen=1.0, frame_weight=0.0)
    assert report["context"] is None and "context_s" not in report["timings"]
    head = load_model(str(out)).config.adapter
    assert (head.context_widen, head.frame_weight) == (1.0, 0.0)
    assert not list((tmp_path / "cache").glob("context-*")) and not list((tmp_path / "cache").glob("frames-*"))


def test_indexer_info_says_what_the_query_side_embeds_besides_the_crop():
    from indexer.__main__ import _describe_query_head

    assert "garment crop + 1.4x context" in _describe_query_head(AdapterConfig(dim=16, context_widen=1.4))
    both = _describe_query_head(AdapterConfig(dim=16, context_widen=1.4, frame_weight=0.5))
    assert "garment crop + 1.4x context + whole photo x0.5" in both
    plain = _describe_query_head(AdapterConfig(dim=16))
    assert "garment crop" in plain and "context" not in plain and "whole photo" not in plain
