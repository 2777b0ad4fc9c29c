"""`python -m model adapt`: whitening as defined, garment boxes, the resumable cache, and the checkpoint
through `indexer build` and `/search` (the service embeds uploads with the query-side head)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model.training.adapt import AdaptConfig, adapt
from model.adapted_head import crop_boxes, garment_boxes
from model.training.feature_cache import CacheError, CachePart
from model.training.whitening import fit_whitening

ROOT = Path(__file__).resolve().parents[1]
# Small inputs keep every pass cheap; the code paths are the ones a 224 px run takes.
FAST = dict(input_size=64, query_size=96, view_size=96, views=2, dim=16, batch_size=8, workers=0, progress=False)


def _run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def make_shop(root: Path, items: int, seed: int) -> Path:
    """A catalogue folder of `items` items (one 96 px photo each) on a studio-white backdrop."""
    from demo.synth import generate_catalog

    return generate_catalog(root, n_items=items, photos_per_item=1, size=96, seed=seed).parent / "images"


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    return make_shop(tmp_path_factory.mktemp("shop"), items=16, seed=3)


@pytest.fixture(scope="module")
def adapted(shop, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapted") / "a.safetensors"
    adapt(AdaptConfig(data=shop, format="catalog", out=out, cache=out.parent / "cache", **FAST))
    return out


# --- whitening ----------------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_whitening_makes_the_pairs_difference_covariance_the_identity():
    rng = np.random.default_rng(0)
    shops = _unit(rng.normal(size=(4000, 12)) + 3.0)
    # Views differ from their shop photo mostly along two axes: those are what whitening must shrink.
    noise = rng.normal(size=(4000, 12)) * np.r_[2.0, 1.5, np.full(10, 0.05)] * 0.1
    queries = _unit(shops + noise)
    white = fit_whitening(queries, shops, dim=8, shrinkage=0.0)
    diff = queries - shops
    projected_diff = diff @ white.projection.T
    cov = projected_diff.T @ projected_diff / len(diff)
    np.testing.assert_allclose(cov, np.eye(8), atol=1e-3)
    # ... and the kept axes are the catalogue's strongest after whitening, strongest first.
    spread = (shops - white.mean) @ white.projection.T
    spread_cov = spread.T @ spread / len(spread)
    off_diagonal = spread_cov - np.diag(np.diag(spread_cov))
    assert np.abs(off_diagonal).max() < 1e-3 * np.abs(np.diag(spread_cov)).max()
    assert np.all(np.diff(np.diag(spread_cov)) <= 1e-9)


def test_whitening_finds_items_that_raw_descriptors_confuse():
    rng = np.random.default_rng(1)
    identity = rng.normal(size=(500, 4))
    # Two channels carry identity; ten carry view-dependent clutter far larger than it.
    shops = np.hstack([identity, rng.normal(size=(500, 10)) * 3])
    queries = np.hstack([identity + rng.normal(size=(500, 4)) * 0.1, rng.normal(size=(500, 10)) * 3])
    white = fit_whitening(queries[:400], shops[:400], dim=4, shrinkage=0.01, catalog=shops)

    def top1(q: np.ndarray, g: np.ndarray) -> float:
        return float((np.argmax(q @ g.T, axis=1) == np.arange(len(q))).mean())

    raw = top1(_unit(queries[400:]), _unit(shops[400:]))
    learned = top1(white.apply(queries[400:]), white.apply(shops[400:]))
    assert raw < 0.3 and learned > 0.9, (raw, learned)


def test_whitening_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="two pairs"):
        fit_whitening(np.ones((1, 4)), np.ones((1, 4)), dim=2)
    with pytest.raises(ValueError, match="dim"):
        fit_whitening(np.ones((5, 4)), np.ones((5, 4)), dim=9)


# --- garment boxes and crops --------------------------------------------------------------------

def test_garment_box_covers_the_confident_cells_with_margin_and_is_square():
    prob = torch.zeros(1, 1, 10, 10)
    prob[0, 0, 2:6, 3:5] = 1.0  # rows 2-5, columns 3-4: a tall garment
    box = garment_boxes(prob, margin=0.1)[0].tolist()
    x0, y0, x1, y1 = box
    assert x1 - x0 == pytest.approx(y1 - y0, abs=1e-6)
    assert y0 < 0.2 + 0.02 and y1 > 0.6 - 0.02  # the garment's rows, inside the box
    assert x0 < 0.3 and x1 > 0.5
    assert (x0 + x1) / 2 == pytest.approx(0.4, abs=0.05) and (y0 + y1) / 2 == pytest.approx(0.4, abs=0.05)
    assert y1 - y0 == pytest.approx(0.4 * 1.2, abs=0.08)


def test_a_small_garment_that_fills_no_cell_is_still_found():
    prob = torch.full((1, 1, 10, 10), 0.05)
    prob[0, 0, 7, 2] = 0.4  # a quarter-covered cell: no cell is over 0.5
    x0, y0, x1, y1 = garment_boxes(prob, margin=0.1)[0].tolist()
    assert x1 - x0 < 0.4 and x0 < 0.25 < x1 and y0 < 0.75 < y1


def test_flip_augmentation_averages_the_photo_and_its_mirror():
    from model.inference import embed_query_batch, plan_inference

    model = _tiny_model().eval()
    images = torch.rand(2, 3, 64, 64)
    plan = plan_inference(torch.device("cpu"))
    plain, _ = embed_query_batch(model, images, plan)
    mirrored, _ = embed_query_batch(model, torch.flip(images, dims=[3]), plan)
    both, _ = embed_query_batch(model, images, plan, flip=True)
    expected = (plain + mirrored) / np.linalg.norm(plain + mirrored, axis=1, keepdims=True)
    np.testing.assert_allclose(both, expected, atol=1e-5)
    assert not np.allclose(both, plain, atol=1e-3)


def _tiny_model():
    from model import build_from_backbone

    from .conftest import TINY_PREP

    return build_from_backbone("resnet18", "none", dim=16, preprocessing=TINY_PREP)


def test_no_garment_found_means_the_whole_frame():
    assert garment_boxes(torch.zeros(2, 1, 7, 7), margin=0.1).tolist() == [[0.0, 0.0, 1.0, 1.0]] * 2


def test_crop_of_the_whole_frame_is_the_image_and_past_the_edge_is_letterbox_zero():
    images = torch.rand(1, 3, 32, 32)
    same = crop_boxes(images, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 32)
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    right_half_out = crop_boxes(images, torch.tensor([[0.5, 0.0, 1.5, 1.0]]), 32)
    assert right_half_out[..., 17:].abs().max() == 0
    torch.testing.assert_close(right_half_out[..., :15], images[..., 16:31], atol=0.05, rtol=0)


def test_photo_crop_is_the_box_of_the_photo_itself_and_padding_past_its_edges_is_zero():
    from PIL import Image

    from model.config import Preprocessing
    from model.garment_crop import crop_photo, photo_box
    from model.preprocessing import build_transform

    prep = Preprocessing(input_size=32)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))  # 400 wide, 300 high
    # the 400x300 photo letterboxed into a 100 px frame: content 100x75 from y = 12
    assert photo_box([0.0, 0.12, 1.0, 0.87], photo.size, 100) == pytest.approx((0, 0, 400, 300))
    # a square box inside the photo: exactly the catalogue transform of that region
    box = [0.2, 0.3, 0.2 + 0.32, 0.3 + 0.32]
    x0, y0, x1, y1 = photo_box(box, photo.size, 100)
    expected = build_transform(prep)(photo.crop((round(x0), round(y0), round(x1), round(y1))))
    got = crop_photo(photo, box, 100, prep)
    assert got.shape == expected.shape and (got - expected).abs().mean() < 0.02  # resampling noise only
    # a box half past the right edge: the left half is the photo, the right half letterbox zero
    past = crop_photo(photo, [0.75, 0.3, 1.25, 0.8], 100, prep)
    assert past[..., 17:].abs().max() == 0 and (past[..., :15] != 0).float().mean() > 0.9
    assert crop_photo(photo, [2.0, 2.0, 2.5, 2.5], 100, prep).abs().max() == 0  # off the photo: all padding


def test_query_side_crops_a_small_garment_from_the_photo_not_from_the_query_tensor(adapted):
    from PIL import Image

    from model import load_model
    from model.garment_crop import crop_photos
    from model.inference import embed_query_batch, plan_inference
    from model.preprocessing import build_transform

    loaded = load_model(str(adapted))
    model, plan = loaded.model.eval(), plan_inference(torch.device("cpu"))
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8))  # detail the 96 px frame loses
    tensor = build_transform(loaded.config.query_prep)(photo)[None]
    vectors, boxes = embed_query_batch(model, tensor, plan, photos=[photo])
    with torch.inference_mode():
        fmap, located = model.locate_garments(tensor)
        # every box the query is embedded from (the garment's and its context box) is cut from the photo;
        # the whole frame's term comes from the locate pass's map
        expected = sum(model.embed_query_crops(crop_photos([photo], box.numpy(), tensor.shape[-1],
                                                           loaded.config.preprocessing)).numpy()
                       for box in model.adapter.query_boxes(located))
        frame = model.adapter.project(model.adapter.pool(fmap), "query").numpy()
        expected = _unit(expected + model.adapter.config.frame_weight * frame)
        from_tensor, _ = model.encode_query(tensor)
    np.testing.assert_allclose(boxes, located.numpy(), atol=1e-6)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert not np.allclose(vectors, from_tensor.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="photos for"):
        embed_query_batch(model, tensor, plan, photos=[photo, photo])


# --- the cache ----------------------------------------------------------------------------------

def test_cache_part_refuses_a_folder_written_for_other_content(tmp_path):
    part = CachePart(tmp_path, "catalog", {"backbone": "a"}, rows=3, shard_size=2).open()
    (part.dir / "cache.json").write_text(json.dumps({"backbone": "b"}))
    with pytest.raises(CacheError, match="other content"):
        CachePart(tmp_path, "catalog", {"backbone": "a"}, rows=3, shard_size=2).open()
    other = CachePart(tmp_path, "catalog", {"backbone": "c"}, rows=3, shard_size=2)
    assert other.dir != part.dir  # another model's cache never shares a folder


def test_full_disk_is_a_clear_error_and_leaves_no_half_shard(tmp_path, monkeypatch):
    part = CachePart(tmp_path, "views", {"x": 1}, rows=4, shard_size=2).open()
    part.write(0, {"a": np.zeros((2, 3))})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(CacheError, match="full.*resumes"):
        part.write(1, {"a": np.zeros((2, 3))})
    assert sorted(p.name for p in part.dir.iterdir()) == ["cache.json", "shard-00000.npz"]
    assert part.missing() == [1]


def test_a_part_that_will_not_fit_on_the_disk_is_said_at_its_first_shard(tmp_path, monkeypatch, caplog):
    from collections import namedtuple

    import model.training.feature_cache as feature_cache

    usage = namedtuple("usage", "total used free")
    free = {"bytes": 10**12}
    monkeypatch.setattr(feature_cache.shutil, "disk_usage", lambda path: usage(2 * 10**12, 0, free["bytes"]))
    roomy = CachePart(tmp_path, "views", {"x": 1}, rows=8, shard_size=2).open()
    with caplog.at_level("WARNING", logger="snap2shop.adapt"):
        roomy.write(0, {"a": np.zeros((2, 1000))})
    assert not caplog.records
    free["bytes"] = 1000  # three shards of about 16 kB each still to come
    tight = CachePart(tmp_path, "views", {"x": 2}, rows=8, shard_size=2).open()
    with caplog.at_level("WARNING", logger="snap2shop.adapt"):
        tight.write(0, {"a": np.zeros((2, 1000))})
        tight.write(1, {"a": np.zeros((2, 1000))})  # said once per part, not at every shard
    assert len(caplog.records) == 1 and "GB free" in caplog.text and "--cache" in caplog.text
    assert tight.missing() == [2, 3]  # a warning, not a stop: the run goes on until the disk is full


def test_adapt_resumes_from_the_shards_a_killed_run_wrote(shop, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "a.safetensors"
    args = ["adapt", "--data", str(shop), "--format", "catalog", "--out", str(out), "--cache", str(cache),
            "--input-size", "64", "--query-size", "96", "--view-size", "96", "--views", "2", "--dim", "16", "--batch-size", "4",
            "--workers", "0", "--shard-rows", "4", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "model", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(cache.glob("views-*/shard-00001.npz")):
            time.sleep(0.05)
        assert proc.poll() is None, "adapt finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()  # nothing half-written is published
    written = {p: p.stat().st_mtime_ns for p in cache.glob("*/shard-*.npz")}
    assert written
    result = subprocess.run([sys.executable, "-m", "model", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in written.items())  # kept, not redone
    from model import load_model

    assert load_model(str(out)).model.has_query_head


def test_each_view_set_is_drawn_in_its_style_and_cached_apart(shop, adapted, tmp_path):
    import shutil

    from model.synthesis import VIEW_STYLES, ConsumerViewSynthesizer

    cache = shutil.copytree(adapted.parent / "cache", tmp_path / "cache")  # the default's, made by the fixture
    before = {p.name for p in cache.glob("views-*")}
    out = tmp_path / "a.safetensors"
    adapt(AdaptConfig(data=shop, format="catalog", out=out, cache=cache, **FAST, view_styles=("default", "hard")))
    report = json.loads(out.with_name("a.adapt.json").read_text())
    assert report["view_styles"] == ["default", "hard"]
    made = {p.name for p in cache.glob("views-*")} - before
    assert len(made) == 1  # view set 0 is the default's, reused; set 1 is new: the hard style's
    hard = json.loads(json.dumps(ConsumerViewSynthesizer(VIEW_STYLES["hard"]).describe()))  # JSON: tuples are lists
    assert json.loads((cache / made.pop() / "cache.json").read_text())["synth"] == hard
    assert hard != json.loads(json.dumps(ConsumerViewSynthesizer(VIEW_STYLES["default"]).describe()))


def test_view_company_is_drawn_from_training_items_only(shop, tmp_path):
    from model.training.adapt_data import view_synthesizers
    from model.training.data import read_data

    photos = sorted(shop.glob("*.jpg"))
    split = tmp_path / "split.csv"
    split.write_text("path,item_id,split\n" + "".join(
        f"{p.name},{p.stem},{'test' if n % 4 == 0 else 'train'}\n" for n, p in enumerate(photos)))  # a folder: id = stem
    train = read_data("catalog", shop, split_csv=split).split("train")
    synthesizers = view_synthesizers(("default", "company"), 3, train)
    assert [s.config.p_company > 0 for s in synthesizers] == [False, True, False]
    company = {p.resolve() for p in synthesizers[1].companions}
    assert company == {p.resolve() for p in photos[1::4] + photos[2::4] + photos[3::4]}
    # adapt itself hands them the training items: its company set is cached under their listing.
    out, cache = tmp_path / "a.safetensors", tmp_path / "cache"
    adapt(AdaptConfig(data=shop, format="catalog", split_csv=split, out=out, cache=cache, **FAST,
                      view_styles=("default", "company")))
    cached = [json.loads((p / "cache.json").read_text())["synth"] for p in cache.glob("views-*")]
    assert [synth["companions"] for synth in cached if "companions" in synth] == [
        synthesizers[1].describe()["companions"]]
    everyone = view_synthesizers(("company",), 1, read_data("catalog", shop))[0].describe()["companions"]
    assert everyone != synthesizers[1].describe()["companions"]


def test_where_the_product_is_is_learnt_from_the_views_without_company(adapted, shop, tmp_path, monkeypatch):
    import shutil

    import model.training.adapt as adapt_module

    fitted_on = []
    real = adapt_module.fit_foreground_on_parts

    def recording(cat_part, view_parts, *args, **kwargs):
        fitted_on.append([json.loads((part.dir / "cache.json").read_text())["synth"] for part in view_parts])
        return real(cat_part, view_parts, *args, **kwargs)

    monkeypatch.setattr(adapt_module, "fit_foreground_on_parts", recording)
    cache = shutil.copytree(adapted.parent / "cache", tmp_path / "cache")  # the default's first set: no pass again
    adapt(AdaptConfig(data=shop, format="catalog", out=tmp_path / "a.safetensors", cache=cache, **FAST,
                      view_styles=("default", "company")))
    # The company set is cached with what it drew from (its photos' listing, hashed)...
    company = [json.loads((p / "cache.json").read_text())["synth"] for p in cache.glob("views-*")]
    assert [len(synth["companions"]) for synth in company if "companions" in synth] == [64]
    # ...but the foreground map learnt where the product is from the set without company.
    assert len(fitted_on) == 1 and len(fitted_on[0]) == 1 and "companions" not in fitted_on[0][0]
    # With no set free of company, every set teaches it rather than none.
    adapt(AdaptConfig(data=shop, format="catalog", out=tmp_path / "b.safetensors", cache=cache, **FAST,
                      view_styles=("company",)))
    assert len(fitted_on[1]) == 2 and all("companions" in synth for synth in fitted_on[1])


# --- the checkpoint through the indexer and the service ------------------------------------------

def test_adapted_checkpoint_carries_both_sides(adapted):
    from model import load_model

    loaded = load_model(str(adapted))
    config = loaded.config
    assert config.adapter is not None and config.adapter.locate and config.adapter.foreground
    assert (config.preprocessing.input_size, config.query_prep.input_size) == (64, 96)
    report = json.loads(adapted.with_name("a.adapt.json").read_text())
    assert report["catalog_photos"] == 16 and report["views"] == 32 and report["skipped"] == []
    # 16 items hold none out: the context crop and the frame ship as configured, the report says unmeasured
    assert "not_measured" in report["context"] and config.adapter.context_widen == AdaptConfig.context_widen
    assert config.adapter.frame_weight == AdaptConfig.frame_weight == report["context"]["shipped"]["frame_weight"]
    query, boxes = loaded.model.encode_query(torch.rand(2, 3, 96, 96))
    assert query.shape == (2, loaded.model.embedding_dim) and boxes.shape == (2, 4)
    torch.testing.assert_close(query.norm(dim=1), torch.ones(2))


def test_index_and_service_use_the_adapted_sides(adapted, shop, tmp_path):
    from fastapi.testclient import TestClient
    from PIL import Image

    from indexer.build import BuildOptions, build_index
    from indexer.layout import MANIFEST, resolve_version_dir
    from model import load_model
    from model.preprocessing import build_transform, load_image, load_input_image
    from service.app import create_app
    from service.settings import Settings

    index = tmp_path / "idx"
    build_index(BuildOptions(out=index, images=shop, model_spec=str(adapted), batch_size=8, device="cpu",
                             workers=0, progress=False))
    manifest = json.loads((resolve_version_dir(index) / MANIFEST).read_text())
    assert manifest["query_head"]["locate"] is True
    assert manifest["query_preprocessing"]["input_size"] == 96 and manifest["preprocessing"]["input_size"] == 64

    loaded = load_model(str(adapted))
    photo = sorted(shop.iterdir())[0]
    # a shopper's photo: the shop photo small on a grey street
    street = Image.new("RGB", (250, 200), (90, 95, 100))  # within the crop source size: decoded as it is
    street.paste(load_image(photo).resize((100, 100)), (125, 50))
    street_path = tmp_path / "street.jpg"
    street.save(street_path, quality=92)
    query_prep, shop_prep = loaded.config.query_prep, loaded.config.preprocessing

    def photo_tensor(path: Path, prep):  # as the service and the indexer decode
        return build_transform(prep)(load_input_image(path, prep))[None]

    from model.inference import embed_query_batch, plan_inference

    plan = plan_inference(torch.device("cpu"))
    # the service crops the garment out of the decoded photo, not out of the query tensor
    # at full resolution (no JPEG draft decoding), and its query tensor made from that decode
    street_photo = [load_image(street_path)]
    service_tensor = build_transform(query_prep)(street_photo[0])[None]
    with torch.inference_mode():
        query, _ = embed_query_batch(loaded.model, service_tensor, plan, photos=street_photo)
        flipped, _ = embed_query_batch(loaded.model, service_tensor, plan, flip=True, photos=street_photo)
        from_tensor, _ = embed_query_batch(loaded.model, photo_tensor(street_path, query_prep), plan)
        catalogue_side = loaded.model(photo_tensor(street_path, shop_prep))
        vectors = np.stack([loaded.model(photo_tensor(p, shop_prep))[0].numpy() for p in sorted(shop.iterdir())])
    assert not np.allclose(from_tensor, query, atol=1e-4)
    expected = sorted(vectors @ query[0], reverse=True)[:5]
    expected_flip = sorted(vectors @ flipped[0], reverse=True)[:5]
    not_expected = sorted(vectors @ catalogue_side[0].numpy(), reverse=True)[:5]
    assert not np.allclose(expected, not_expected, atol=1e-3)

    with TestClient(create_app(Settings(index=index, device="cpu", tta="none"))) as client:
        body = client.post("/search?k=5", files={"image": ("street.jpg", street_path.read_bytes())}).json()
        assert [r["score"] for r in body["results"]] == pytest.approx(expected, abs=1e-4)
    with TestClient(create_app(Settings(index=index, device="cpu"))) as client:  # tta auto: flip, for this model
        body = client.post("/search?k=5", files={"image": ("street.jpg", street_path.read_bytes())}).json()
        assert [r["score"] for r in body["results"]] == pytest.approx(expected_flip, abs=1e-4)
        x0, y0, x1, y1 = body["region"]
        assert 0 <= x0 < x1 <= 250 and 0 <= y0 < y1 <= 200
        boxed = client.post("/search?k=5&box=100,20,250,200",
                            files={"image": ("street.jpg", street_path.read_bytes())}).json()
        bx0, by0, bx1, by1 = boxed["region"]
        assert 100 <= bx0 < bx1 <= 250 and 20 <= by0 < by1 <= 200  # inside the user's region


# --- bad input ----------------------------------------------------------------------------------

# --- tuning the backbone's last blocks --------------------------------------------------------------

def _imagenet_backbone() -> dict[str, torch.Tensor]:
    from model.checkpoint import build_from_backbone

    return build_from_backbone("efficientnet-lite0", "imagenet").backbone.state_dict()


def _first_tuned_block() -> int:
    """efficientnet-lite0 has 16 blocks; by default adapt tunes the last LITE_TUNE_BLOCKS of them."""
    from model.training.adapt import LITE_TUNE_BLOCKS

    return 16 - LITE_TUNE_BLOCKS


def _tail_key(key: str) -> bool:
    """A parameter of the tuned tail by default: the tuned blocks and the conv head above them."""
    tuned = tuple(f"net._blocks.{b}." for b in range(_first_tuned_block(), 16))
    return key.startswith((*tuned, "net._conv_head.", "net._bn1."))


def test_tuning_trains_only_the_last_blocks_and_their_maps_are_cached_for_indexing(adapted):
    from model import load_model
    from model.checkpoint import weights_checksum

    report = json.loads(adapted.with_name("a.adapt.json").read_text())
    tuning = report["tuning"]
    # 16 items are too few to hold any out: nothing to choose on, so the tuned model ships.
    assert tuning["shipped"] == "tuned" and tuning["held_out_top1"] == {"frozen": None, "tuned": None}
    assert len(tuning["loss"]) == tuning["config"]["epochs"] == 2 and tuning["views"] == 32
    assert {"tune_s", "refit_s"} <= set(report["timings"])
    tuned, imagenet = load_model(str(adapted)).model.backbone.state_dict(), _imagenet_backbone()
    changed = {k for k, v in imagenet.items() if not torch.equal(tuned[k], v)}
    assert changed and all(_tail_key(k) for k in changed)
    assert any(k.startswith(f"net._blocks.{_first_tuned_block()}.") for k in changed)  # the first tuned block too
    assert not any("running_" in k for k in changed)  # BatchNorm statistics stay frozen
    cache = adapted.parent / "cache"
    assert len(list(cache.glob("trunk-*"))) == 3 and len(list(cache.glob("tune-*.pt"))) == 1  # catalogue, 2 crop sets
    # The frozen backbone's catalogue maps, and the tuned one's that `indexer build` reads.
    sums = {json.loads((p / "cache.json").read_text())["backbone_sha256"] for p in cache.glob("catalog-*")}
    assert sums == {weights_checksum(load_model(str(adapted)).model.backbone),
                    weights_checksum(load_model("efficientnet-lite0").model.backbone)}


def test_the_frozen_backbone_ships_when_tuning_finds_no_more(shop, tmp_path, monkeypatch):
    import model.training.adapt as adapt_module
    from model import load_model

    verdicts = iter([0.5, 0.4])  # held-out top-1: the frozen projection's, then the tuned one's
    monkeypatch.setattr(adapt_module, "_held_out_top1", lambda projection: next(verdicts))
    out = tmp_path / "a.safetensors"
    adapt(AdaptConfig(data=shop, format="catalog", out=out, cache=tmp_path / "cache", **FAST | {"views": 1}))
    tuning = json.loads(out.with_name("a.adapt.json").read_text())["tuning"]
    assert tuning["shipped"] == "frozen" and tuning["held_out_top1"] == {"frozen": 0.5, "tuned": 0.4}
    served = load_model(str(out)).model.backbone.state_dict()
    assert all(torch.equal(served[k], v) for k, v in _imagenet_backbone().items())
    assert len(list((tmp_path / "cache").glob("catalog-*"))) == 1  # the tuned maps are not left behind


def test_no_tuning_keeps_no_trunk_activations(shop, tmp_path):
    from model import load_model

    out = tmp_path / "a.safetensors"
    adapt(AdaptConfig(data=shop, format="catalog", out=out, cache=tmp_path / "cache",
                      **FAST | {"views": 1, "tune_blocks": 0}))
    assert json.loads(out.with_name("a.adapt.json").read_text())["tuning"] is None
    assert not list((tmp_path / "cache").glob("trunk-*")) and not list((tmp_path / "cache").glob("tune-*"))
    served = load_model(str(out)).model.backbone.state_dict()
    assert all(torch.equal(served[k], v) for k, v in _imagenet_backbone().items())


def test_bad_flags_and_empty_folders_exit_2_with_one_line(tmp_path, shop):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "a.safetensors")
    cases = [
        (["--data", str(empty), "--format", "catalog", "--out", out], "no photos"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--views", "0"], "--views"),
        (["--data", str(shop), "--format", "catalog", "--out", str(tmp_path / "a.pt")], ".safetensors"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--view-styles", "default,dusk"], "--view-styles"),
        (["--data", str(shop), "--format", "catalog", "--out", str(tmp_path / "no" / "a.safetensors")],
         "does not exist"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--tune-blocks", "-1"], "--tune-blocks"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--tune-blocks", "16"], "blocks"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--tune-epochs", "0"], "--tune-epochs"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--tune-lr", "2"], "--tune-lr"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--context-widen", "0.5"], "--context-widen"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--context-widen", "wide"], "--context-widen"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--frame-weight", "-0.5"], "--frame-weight"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--frame-weight", "3"], "--frame-weight"),
        (["--data", str(shop), "--format", "catalog", "--out", out, "--decode-priority", "low"], "--decode-priority"),
    ]
    for args, words in cases:
        result = _run_cli("adapt", *args, "--cache", str(tmp_path / "cache"))
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr, (args, result.stderr)
    assert not list(tmp_path.glob("*.safetensors"))


def test_unreadable_photos_are_skipped_and_listed(shop, tmp_path):
    import shutil

    folder = tmp_path / "shop"
    shutil.copytree(shop, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "a.safetensors"
    adapt(AdaptConfig(data=folder, format="catalog", out=out, cache=tmp_path / "cache", **FAST | {"views": 1}))
    report = json.loads(out.with_name("a.adapt.json").read_text())
    assert len(report["skipped"]) >= 1 and all("broken.jpg" in line for line in report["skipped"])
    assert report["train_items"] == 16


# --- re-indexing from the cached feature maps ------------------------------------------------------

def _index_vectors(index: Path) -> tuple[np.ndarray, dict]:
    from indexer.store import open_index

    opened = open_index(index)
    try:
        return opened.store.vectors(np.arange(opened.store.count())), opened.manifest
    finally:
        opened.close()


def test_indexing_an_adapted_model_reuses_its_cached_maps(shop, tmp_path):
    import shutil

    from indexer.build import BuildOptions, build_index

    images = tmp_path / "shop"
    shutil.copytree(shop, images)
    model = tmp_path / "a.safetensors"
    adapt(AdaptConfig(data=images, format="catalog", out=model, cache=tmp_path / "cache", **FAST | {"views": 1}))

    def build(name: str, features: str) -> tuple[np.ndarray, dict]:
        build_index(BuildOptions(out=tmp_path / name, images=images, model_spec=str(model), batch_size=8,
                                 device="cpu", workers=0, progress=False, features=features))
        return _index_vectors(tmp_path / name)

    reused, manifest = build("reused", "auto")
    encoded, plain = build("encoded", "off")
    assert "reused_features" in manifest.timings and "reused_features" not in plain.timings
    # The cache keeps maps in float16: the same vectors up to that rounding.
    assert np.abs(reused - encoded).max() < 2e-3
    assert np.min(np.sum(reused * encoded, axis=1)) > 0.9999
    from indexer.verify import verify_index

    assert verify_index(tmp_path / "reused", deep=True) == []  # the catalogue side re-embeds to the same

    # A photo that changed since it was cached must not get its old map: the build encodes.
    victim = sorted(images.iterdir())[0]
    victim.write_bytes(sorted(images.iterdir())[1].read_bytes())
    _, manifest = build("changed", "auto")
    assert "reused_features" not in manifest.timings


def test_real_shopper_photos_of_a_pairs_csv_are_adapted_on(shop, tmp_path):
    """--format pairs: the consumer photos themselves are the views (no mask: the foreground head
    learns from the shop photos), and the held-out item never enters the fit."""
    from PIL import Image

    from model import load_model

    lines = ["consumer_path,shop_path,item_id,split"]
    for n, photo in enumerate(sorted(shop.iterdir())):
        street = Image.new("RGB", (160, 130), (60 + n * 5, 90, 110))
        street.paste(Image.open(photo).convert("RGB").resize((70, 70)), (40 + n, 30))
        street.save(tmp_path / f"street-{n}.jpg", quality=90)
        lines.append(f"street-{n}.jpg,{photo},{photo.stem},{'test' if n == 0 else 'train'}")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "p.safetensors"
    adapt(AdaptConfig(data=pairs, format="pairs", out=out, cache=tmp_path / "cache", **FAST))
    report = json.loads(out.with_name("p.adapt.json").read_text())
    assert report["views"] == 15 and report["train_items"] == 15 and report["views_per_item"] is None
    assert load_model(str(out)).model.has_query_head


def test_evaluation_embeds_adapted_queries_as_the_service_does(adapted, shop):
    """model evaluate's query side (embed_views, query=True) crops the garment out of each rendered
    view, through the DataLoader, exactly as embed_query_batch does with the decoded photos."""
    from model import load_model
    from model.training.data import read_data
    from model.inference import embed_query_batch, plan_inference
    from model.preprocessing import build_transform
    from model.synthesis import ConsumerViewSynthesizer
    from model.training.views import View, embed_views, render_view

    loaded = load_model(str(adapted))
    plan = plan_inference(torch.device("cpu"))
    views = [View(photo, synth_seed=seed) for seed, photo in enumerate(read_data("catalog", shop).shop()[:5])]
    synth = ConsumerViewSynthesizer()
    got = embed_views(loaded.model, plan, views, loaded.config.query_prep, synth, batch_size=2, workers=1, query=True)
    photos = [render_view(v, synth) for v in views]
    tensors = torch.stack([build_transform(loaded.config.query_prep)(p) for p in photos])
    expected, _ = embed_query_batch(loaded.model, tensors, plan, photos=photos)
    np.testing.assert_allclose(got, expected, atol=1e-5)


class _PolicyRows(torch.utils.data.Dataset):
    """RowDataset's keys, with the scheduling policy of the process that made the row as its 'error'."""

    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        return self.base[index] | {"error": str(os.sched_getscheduler(0))}


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="the OS has no SCHED_IDLE policy")
def test_idle_workers_render_the_rows_on_time_the_model_leaves(shop, tmp_path):
    from model.inference import plan_inference
    from model.training.adapt_cache import encode_rows
    from model.training.adapt_data import RowDataset, catalog_rows
    from model.training.data import read_data

    photos = read_data("catalog", shop).shop()[:6]
    from .conftest import TINY_PREP

    rows = _PolicyRows(RowDataset(catalog_rows(photos), TINY_PREP))
    model, plan = _tiny_model().backbone.eval(), plan_inference(torch.device("cpu"))
    for priority, policy in (("idle", os.SCHED_IDLE), ("normal", os.SCHED_OTHER)):
        part = CachePart(tmp_path / priority, "catalog", {"priority": priority}, len(rows), 4).open()
        encode_rows(part, rows, model, plan, 4, 1, False, "rows", decode_priority=priority)
        assert set(part.read(["error"])["error"]) == {str(policy)}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the process running the model never yields
