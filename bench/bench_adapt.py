"""Benchmark: CPU adaptation (`python -m model adapt`) against the zero-shot model, on several query recipes.

    python bench/bench_adapt.py [--data ../shared/data/fashion-products] [--cache DIR] [--queries 600]
        [--model SPEC ...] [--zero-shot-sizes 224,320,384] [--recipes synth,small,harsh,street,motion,crowd]
        [--variants default,k1,whiten,no-locate,no-foreground] [--tta [flip|both]] [--out var/bench/adapt.json]
        [--query-sizes 224,320,384,448] [--crop-from photo,query]

Adaptation trains on fashion-products' `train` items only (split.csv); every figure is measured on
shopper's views of `test` items searched among all 9,583 catalogue photos (best photo per item).
Queries come from six recipes, so a gain on the training synthesiser's own look is not mistaken
for a gain on real photos:

- synth:  the training synthesiser's default config, with evaluation's own seeds;
- small:  the garment smaller in a larger frame (0.2-0.55 of it), more clutter;
- harsh:  strong light, blur, noise, heavy JPEG and more occlusion;
- street: demo.synth.street_view: a crop of the shop photo, tilted and re-lit, no new scene;
- motion: degradations training never renders: motion blur, a dim scene's noise, a 160-260 px
  photo, JPEG quality 20-45;
- crowd:  composed apart from the training synthesiser (`crowd_view`: its own cut-out, no procedural
  scene): the product in front of other catalogue products, defocused, on an enlarged catalogue crop.
  With `--view-styles default,company` (other products behind the product in training's views)
  this recipe is the one most like training: a gain there alone is not a gain on real photos.

`--query-sizes` scores each adapted `--model` and variant again at other query sizes (the size the
garment is found at; no refit), `--crop-from` with the garment cropped out of the view itself (the
service's way) or out of the query tensor (how training's crops are made).

Catalogue embeddings are computed from the adapt cache's feature maps when the cache has them
(the same maps a forward pass would give), so each model costs one pass per query only.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fashion-products"
RECIPE_SEEDS = {"synth": 20_181_116, "small": 31_000_000, "harsh": 41_000_000, "street": 51_000_000,
                "motion": 61_000_000, "crowd": 71_000_000}


def motion_view(synth):
    """A recipe of degradations the training synthesiser never renders: the hand's motion blur along
    a random line, a dim scene's gain and noise, a low-resolution phone photo, heavy compression."""
    import io

    import numpy as np
    from PIL import Image

    def view(photo, rng):
        image = np.asarray(synth(photo, rng), dtype=np.float32)
        length, angle = rng.randint(5, 15), rng.uniform(0, np.pi)
        h, w = image.shape[:2]
        padded = np.pad(image, ((length, length), (length, length), (0, 0)), mode="edge")
        blurred = np.zeros_like(image)
        for t in np.linspace(-0.5, 0.5, length):
            dx, dy = round(t * length * np.cos(angle)), round(t * length * np.sin(angle))
            blurred += padded[length + dy:length + dy + h, length + dx:length + dx + w]
        image = blurred / length
        gain = rng.uniform(0.35, 0.7)  # a dim room, then the phone's gain: noise grows with it
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(4, 10) / gain, image.shape)
        image = np.clip((image * gain + noise * gain) / gain ** 0.6, 0, 255).astype(np.uint8)
        out = Image.fromarray(image)
        scale = rng.randint(160, 260) / max(out.size)
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.BILINEAR)
        buffer = io.BytesIO()
        out.save(buffer, "JPEG", quality=rng.randint(20, 45))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return view


def crowd_view(others):
    """A recipe composed apart from the training synthesiser (no product_mask, no procedural scene,
    no camera model of its own): the product, cut out by a plain near-white threshold, stands in
    front of two to four other catalogue products (`others`: their paths), smaller and out of
    focus, as people behind a shopper's subject are, on a backdrop of an enlarged, defocused crop of
    another catalogue photo under a coloured light; then lens blur, a colour cast, shot noise, JPEG."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    from model.preprocessing import load_image

    def cut(img):
        """RGBA: alpha is off where near-white pixels reach the photo's border (a white garment stays), opened
        and feathered."""
        rgb = img.convert("RGB")
        # copy(): an image made by fromarray shares the array's memory, which floodfill leaves unchanged
        white = Image.fromarray(np.where(np.asarray(rgb, np.uint8).min(2) > 246, 255, 0).astype(np.uint8)).copy()
        w, h = white.size
        border = [(x, y) for x in range(0, w, 4) for y in (0, h - 1)]
        border += [(x, y) for y in range(0, h, 4) for x in (0, w - 1)]
        for xy in border:
            if white.getpixel(xy) == 255:
                ImageDraw.floodfill(white, xy, 128)
        alpha = Image.fromarray(np.where(np.asarray(white) == 128, 0, 255).astype(np.uint8))
        for step in (ImageFilter.MinFilter(3), ImageFilter.MaxFilter(3), ImageFilter.GaussianBlur(1)):
            alpha = alpha.filter(step)
        return Image.merge("RGBA", (*rgb.split(), alpha))

    def place(canvas, layer, height, cx, bottom, angle):
        scale = height / layer.height
        layer = layer.resize((max(1, round(layer.width * scale)), max(1, round(height))), Image.BICUBIC)
        layer = layer.rotate(angle, Image.BICUBIC, expand=True)
        canvas.alpha_composite(layer, (round(cx - layer.width / 2), round(bottom - layer.height)))

    def view(shop, rng):
        H = rng.randint(420, 720)
        W = round(H * rng.choice((0.75, 0.75, 1.0, 0.5625)))
        backdrop = load_image(rng.choice(others)).convert("RGB")
        f = rng.uniform(0.3, 0.6)
        x0, y0 = rng.uniform(0, 1 - f) * backdrop.width, rng.uniform(0, 1 - f) * backdrop.height
        box = (x0, y0, x0 + f * backdrop.width, y0 + f * backdrop.height)
        backdrop = backdrop.resize((W, H), Image.BILINEAR, box=box)
        light = np.array([rng.uniform(0.35, 0.95) for _ in range(3)], np.float32)
        canvas = Image.fromarray((np.asarray(backdrop.filter(ImageFilter.GaussianBlur(rng.uniform(4, 10))), np.float32)
                                  * light).astype(np.uint8)).convert("RGBA")
        for _ in range(rng.randint(2, 4)):  # the crowd: behind, smaller, defocused, in the scene's light
            other = cut(load_image(rng.choice(others))).filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5)))
            dim = np.asarray(other, np.float32) * np.r_[light * rng.uniform(0.8, 1.1), 1.0]
            place(canvas, Image.fromarray(np.clip(dim, 0, 255).astype(np.uint8), "RGBA"), H * rng.uniform(0.3, 0.6),
                  rng.uniform(0, W), H * rng.uniform(0.55, 1.05), rng.uniform(-8, 8))
        place(canvas, cut(shop), H * rng.uniform(0.4, 0.8), W * rng.uniform(0.35, 0.65),
              H * rng.uniform(0.8, 1.0), rng.uniform(-12, 12))
        img = canvas.convert("RGB").filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
        arr = np.asarray(img, np.float32) / 255
        arr = arr ** rng.uniform(0.8, 1.25) * np.array([rng.uniform(0.88, 1.12) for _ in range(3)], np.float32)
        arr = arr * 255 + np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(2, 8), arr.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=rng.randint(35, 85))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return view


VARIANTS = {
    "default": {},
    "k1": {"views": 1},
    "k4": {"views": 4},
    "hard": {"view_styles": ("default", "hard")},
    "company": {"view_styles": ("default", "company")},
    "whiten": {"head": "whiten"},
    "residual": {"head": "residual"},
    "no-locate": {"locate": False},
    "no-foreground": {"foreground": False, "locate": False},
}


def recipe(name: str, others=()):
    from demo.synth import street_view
    from model.synthesis import ConsumerViewConfig, ConsumerViewSynthesizer

    if name == "synth":
        return ConsumerViewSynthesizer()
    if name == "small":
        return ConsumerViewSynthesizer(ConsumerViewConfig(garment_fraction=(0.2, 0.55), long_side=(384, 720),
                                                          p_occlusion=0.5, p_cutout=1.0))
    if name == "harsh":
        return ConsumerViewSynthesizer(ConsumerViewConfig(
            brightness=(0.45, 1.45), contrast=(0.6, 1.35), gamma=(0.6, 1.6), max_temperature=0.2,
            p_blur=0.8, max_blur=2.2, noise_sigma=(3.0, 12.0), jpeg_quality=(18, 60), p_occlusion=0.6,
            max_occluded_fraction=0.35, saturation=(0.55, 1.35)))
    if name == "street":
        return street_view
    if name == "crowd":
        if not others:
            raise SystemExit("the crowd recipe needs test items beyond --queries for its crowd: "
                             "ask for fewer queries than there are test items")
        return crowd_view(others)
    if name == "motion":
        return motion_view(ConsumerViewSynthesizer(ConsumerViewConfig(
            garment_fraction=(0.3, 0.85), p_blur=0.0, p_rescale=0.0, p_jpeg=0.0, noise_sigma=(0.0, 0.0))))
    raise SystemExit(f"unknown recipe {name!r}; choose from {sorted(RECIPE_SEEDS)}")


def make_queries(test_photos, recipe_name: str, limit: int):
    """(PIL images, item ids) of `limit` test items' views under one recipe, reproducibly."""
    from model.training.views import load_photo

    seed = RECIPE_SEEDS[recipe_name]
    # The crowd around a query: other catalogue photos than the first `limit` test items'.
    synth = recipe(recipe_name, [p.path for p in test_photos[limit:]])
    images, items = [], []
    for index, photo in enumerate(test_photos[:limit]):
        images.append(synth(load_photo(photo), random.Random(seed + 1000 * index)))
        items.append(photo.item_id)
    return images, items


def embed_queries(loaded, images, flip: bool = False, batch_size: int = 16, crop_from: str = "photo"):
    """The service's query embeddings of PIL images ((N, D), or (N, S, D) for a multi-scale model).

    `crop_from`: "photo" crops a located garment out of the view itself, as the service does;
    "query" out of the query tensor, as training's crops are made."""
    import numpy as np
    import torch

    from model.inference import embed_query_batch, plan_inference
    from model.preprocessing import build_transform

    plan = plan_inference(torch.device("cpu"))
    transform = build_transform(loaded.config.query_prep)
    out = []
    for start in range(0, len(images), batch_size):
        photos = images[start:start + batch_size]
        batch = torch.stack([transform(i) for i in photos])
        out.append(embed_query_batch(loaded.model, batch, plan, flip=flip,
                                     photos=None if crop_from == "query" else photos)[0])
    return np.concatenate(out)


def at_query_size(loaded, size: int | None):
    """The model with its query preprocessing at `size` pixels (None: as trained); weights shared."""
    from model.checkpoint import LoadedModel

    config = loaded.model.config
    if size is None or size == config.query_prep.input_size:
        return loaded
    model = copy.copy(loaded.model)  # a shallow copy: the same modules, a config of its own
    model.config = replace(config, query_preprocessing=replace(config.query_prep, input_size=size))
    return LoadedModel(model, loaded.spec, loaded.checksum, loaded.extra)


def catalog_embeddings(loaded, cached_maps: dict, cache: Path | None, gallery_photos, workers: int):
    """Catalogue vectors from the adapt cache's feature maps when it holds them for this model's
    backbone and catalogue preprocessing (a tuned backbone's maps are cached apart from the frozen
    one's, so neither is scored on the other's), else a forward pass of every photo.

    `cached_maps` keeps the maps read so far, by cache part, for the next model of the same backbone."""
    import numpy as np
    import torch

    from model.training.adapt_cache import find_catalog_maps

    part = find_catalog_maps(cache, loaded.model, [p.path for p in gallery_photos]) if cache else None
    if part is not None:
        if part.dir.name not in cached_maps:
            cached_maps[part.dir.name] = part.read(["maps"])["maps"]
        maps = cached_maps[part.dir.name]
        out = []
        with torch.inference_mode():
            for start in range(0, len(maps), 256):
                out.append(loaded.model.embed_feature_maps(torch.from_numpy(maps[start:start + 256]).float()).numpy())
        return np.concatenate(out)
    from model.inference import plan_inference, prepare_model
    from model.training.views import View, embed_views

    plan = plan_inference(torch.device("cpu"))
    return embed_views(prepare_model(loaded.model, plan), plan, [View(p) for p in gallery_photos],
                       loaded.config.preprocessing, None, 32, workers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=None, help="adapt's feature cache (shared by every variant)")
    parser.add_argument("--queries", type=int, default=600, help="test items per recipe")
    parser.add_argument("--model", action="append", default=[], help="extra checkpoints to score")
    parser.add_argument("--zero-shot-sizes", default="224,320,384", help="query sizes of the zero-shot model")
    parser.add_argument("--zero-shot-pooling", default="max")
    parser.add_argument("--recipes", default="synth,small,harsh,street,motion,crowd")
    parser.add_argument("--variants", default="", help=f"adapt variants to train and score: {','.join(VARIANTS)}")
    parser.add_argument("--tta", nargs="?", const="both", default="none", choices=("none", "flip", "both"),
                        help="test-time augmentation to score: none (default), flip, or both (--tta alone)")
    parser.add_argument("--query-sizes", default="", help="adapted models: also score at these query sizes")
    parser.add_argument("--crop-from", default="photo", help="adapted models: photo, query or both (photo,query)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "adapt.json")
    args = parser.parse_args()


    from model import build_from_backbone, load_model
    from model.cpu_runtime import keep_freed_memory

    keep_freed_memory()  # as the service does: per-query times are the service's
    from model.training.adapt import AdaptConfig, adapt
    from model.checkpoint import LoadedModel
    from model.training.data import read_data
    from model.training.evaluate import item_ranks, top_k

    data = read_data("catalog", args.data, split_csv=args.data / "split.csv")
    gallery = data.shop()
    gallery_items = [p.item_id for p in gallery]
    test_photos = [photos[0] for _, photos in sorted(data.split("test").shop_by_item().items())]
    recipes = [r for r in args.recipes.split(",") if r]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = json.loads(args.out.read_text()) if args.out.exists() else []

    t0 = time.perf_counter()
    queries = {r: make_queries(test_photos, r, args.queries) for r in recipes}
    print(f"queries: {len(recipes)} recipes x {args.queries} in {time.perf_counter() - t0:.0f}s", flush=True)

    cached_maps: dict = {}  # catalogue maps read from the cache, by part

    def score(name: str, loaded: LoadedModel, extra: dict, crop_from: str = "photo") -> None:
        started = time.perf_counter()
        cat = catalog_embeddings(loaded, cached_maps, args.cache, gallery, args.workers)
        for r in recipes:
            for flip in {"none": (False,), "flip": (True,), "both": (False, True)}[args.tta]:
                t = time.perf_counter()
                q = embed_queries(loaded, queries[r][0], flip=flip, crop_from=crop_from)
                query_s = time.perf_counter() - t
                ranks = item_ranks(q, queries[r][1], cat, gallery_items)
                row = {"model": name, "recipe": r, "tta": "flip" if flip else "none", "queries": len(q),
                       "query_size": loaded.config.query_prep.input_size,
                       "crop_from": crop_from if loaded.model.locates_garments else None,
                       "ms_per_query": round(query_s / len(q) * 1e3, 1), **top_k(ranks, (1, 5, 10, 20, 50)), **extra}
                results.append(row)
                print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: {time.perf_counter() - started:.0f}s", flush=True)

    def score_query_sides(name: str, loaded: LoadedModel, extra: dict) -> None:
        for size in [int(v) for v in args.query_sizes.split(",") if v] or [None]:
            for crop_from in [c for c in args.crop_from.split(",") if c]:
                score(name, at_query_size(loaded, size), extra, crop_from)

    for spec in args.model:
        score_query_sides(spec, load_model(spec), {})

    for size in [int(s) for s in args.zero_shot_sizes.split(",") if s]:
        model = build_from_backbone("efficientnet-lite0", pooling=args.zero_shot_pooling).eval()
        # 224 is the catalogue's size: one scale; any other query size adds it (best of both scales)
        model.config = replace(model.config, query_preprocessing=replace(model.config.preprocessing, input_size=size))
        score(f"zero-shot {args.zero_shot_pooling}", LoadedModel(model, "zero-shot", ""), {})

    for variant in [v for v in args.variants.split(",") if v]:
        out = args.out.parent / f"adapt-{variant}.safetensors"
        config = AdaptConfig(data=args.data, format="catalog", out=out, split_csv=args.data / "split.csv",
                             cache=args.cache, workers=args.workers, progress=False, **VARIANTS[variant])
        started = time.perf_counter()
        adapt(config)
        report = json.loads(out.with_name(out.stem + ".adapt.json").read_text())
        extra = {"variant": variant, "adapt_min": round((time.perf_counter() - started) / 60, 1),
                 "stage_s": report["timings"], "val": report["projection"].get("val_whiten"),
                 "head": report["projection"]["head"]}
        score_query_sides(f"adapt {variant}", load_model(str(out)), extra)

    return 0


if __name__ == "__main__":
    sys.exit(main())
