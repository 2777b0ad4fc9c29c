"""Benchmark: what an adapted model's query side embeds, scored on bench_adapt.py's recipes.

    python bench/bench_query_crops.py --model ADAPTED [--data ../shared/data/fashion-products]
        [--cache ADAPT_CACHE] [--queries 400] [--recipes synth,small,harsh,street,motion] [--widen 1.4]

The service embeds the garment crop alone (`crop`). Measured against it, with no refit:
- `frame`: the whole query frame, pooled with the foreground weights (the locate pass's own
  feature map: no further pass);
- `wide`: the garment box widened `--widen` times about its centre (one more crop pass);
- best(a,b): each catalogue photo scored by the better of the two; mean(a,b): the normalised mean.

Queries are bench_adapt.py's (same recipes, seeds and test items) against all catalogue photos.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def widen(boxes, factor: float):
    """(N, 4) x0, y0, x1, y1 boxes scaled `factor` times about their centres."""
    import numpy as np

    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2 * factor
    return np.concatenate([centre - half, centre + half], 1)


def query_sides(net, images, transform, factor: float) -> dict:
    """(N, D) embeddings of the garment crop, the whole frame and the widened crop."""
    import numpy as np
    import torch

    from model.garment_crop import crop_photos

    crop, frame, wide = [], [], []
    with torch.inference_mode():
        for start in range(0, len(images), 16):
            photos = images[start:start + 16]
            batch = torch.stack([transform(i) for i in photos])
            fmap, boxes = net.locate_garments(batch)
            frame.append(net.adapter.project(net.adapter.pool(fmap), "query").numpy())
            boxes = boxes.numpy()
            for out, box in ((crop, boxes), (wide, widen(boxes, factor))):
                crops = crop_photos(photos, box, batch.shape[-1], net.config.preprocessing)
                out.append(net.embed_query_crops(crops).numpy())
    return {"crop": np.concatenate(crop), "frame": np.concatenate(frame), "wide": np.concatenate(wide)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an adapted checkpoint that locates the garment")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-products")
    parser.add_argument("--cache", type=Path, default=None, help="adapt's cache: catalogue maps without a pass")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--recipes", default="synth,small,harsh,street,motion")
    parser.add_argument("--widen", type=float, default=1.4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import numpy as np

    from bench_adapt import catalog_embeddings, make_queries
    from model import load_model
    from model.preprocessing import build_transform
    from model.training.data import read_data
    from model.training.evaluate import item_ranks, top_k

    loaded = load_model(args.model)
    net = loaded.model.eval()
    if not net.locates_garments:
        raise SystemExit(f"{args.model}: this model does not locate the garment; nothing to compare")
    data = read_data("catalog", args.data, split_csv=args.data / "split.csv")
    gallery = data.shop()
    gallery_items = [p.item_id for p in gallery]
    test_photos = [photos[0] for _, photos in sorted(data.split("test").shop_by_item().items())]
    cat = catalog_embeddings(loaded, {}, args.cache, gallery, args.workers)
    transform = build_transform(loaded.config.query_prep)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    for recipe in [r for r in args.recipes.split(",") if r]:
        images, items = make_queries(test_photos, recipe, args.queries)
        side = query_sides(net, images, transform, args.widen)
        variants = dict(side)
        for other in ("frame", "wide"):
            variants[f"best(crop,{other})"] = np.stack([side["crop"], side[other]], 1)
            variants[f"mean(crop,{other})"] = unit(side["crop"] + side[other])
        for name, q in variants.items():
            row = {"recipe": recipe, "query": name, "queries": len(items),
                   **top_k(item_ranks(q, items, cat, gallery_items), (1, 20))}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
