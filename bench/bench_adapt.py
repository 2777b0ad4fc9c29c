"""Benchmark: CPU adaptation (`python -m model adapt`) against the zero-shot model, on several query recipes.

    python bench/bench_adapt.py [--data ../shared/data/fashion-products] [--cache DIR] [--queries 600]
        [--model SPEC ...] [--zero-shot-sizes 224,320,384] [--recipes synth,small,harsh,street,motion,crowd,lens]
        [--variants default,k1,whiten,no-locate,no-foreground] [--tta [flip|both]] [--out var/bench/adapt.json]
        [--query-sizes 224,320,384,448] [--crop-from photo,query]

Adaptation trains on fashion-products' `train` items only (split.csv); every figure is measured on
shopper's views of `test` items searched among all 9,583 catalogue photos (best photo per item).
Queries come from seven recipes, so a gain on the training synthesiser's own look is not mistaken
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
  this recipe is the one most like training: a gain there alone is not a gain on real photos;
- lens:   optics no view style renders: barrel distortion, colour fringes, haze, blown highlights
  and their glow, a phone's sharpening. Since adapt's default draws a `night` view set (a dim
  scene's noise and the hand's smear), it, not `motion`, is the recipe of unseen degradations.

The recipes live in query_recipes.py.

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
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fashion-products"
VARIANTS = {
    "default": {},
    "k1": {"views": 1},
    "k4": {"views": 4},
    "hard": {"view_styles": ("default", "hard")},
    "company": {"view_styles": ("default", "company")},
    "plain": {"view_styles": ("default",)},  # the default before "night" joined it (2026-12-08)
    "whiten": {"head": "whiten"},
    "residual": {"head": "residual"},
    "no-locate": {"locate": False},
    "no-foreground": {"foreground": False, "locate": False},
}


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
    parser.add_argument("--recipes", default="synth,small,harsh,street,motion,crowd,lens")
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
    from query_recipes import make_queries

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
