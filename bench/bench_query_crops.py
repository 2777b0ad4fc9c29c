"""Benchmark: what the query side of an adapted model should embed besides its garment crop: how wide
a context box, and at what weight the whole photo.

    python bench/bench_query_crops.py --model ADAPTED [--data ../shared/data/fashion-products]
        [--cache ADAPT_CACHE] [--queries 400] [--recipes synth,small,harsh,street,motion]
        [--widen 1,1.2,1.4,1.6,2] [--frame-weights 0,0.5,1] [--tta]

For each factor and weight (every pair) the model's `context_widen` and `frame_weight` are set to
them and the queries are embedded as the service embeds them (model.inference.embed_query_batch):
the normalised sum of the garment crop's embedding, the embedding of the same box widened that many
times about its centre (1: none) and the whole photo's at that weight (0: none). No refit: the head
is the checkpoint's. `--frame-weights` defaults to the checkpoint's own weight. Queries are
bench_adapt.py's (same recipes, seeds and test items) against all catalogue photos.

The README's "What the query side embeds" rows for the whole frame came from this file at ae6e92c.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def set_query_terms(model, factor: float, frame_weight: float) -> None:
    """The loaded model's query side from now on: its context box widened `factor` times, the whole
    photo added at `frame_weight`."""
    model.adapter.config = replace(model.adapter.config, context_widen=factor, frame_weight=frame_weight)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an adapted checkpoint that locates the garment")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-products")
    parser.add_argument("--cache", type=Path, default=None, help="adapt's cache: catalogue maps without a pass")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--recipes", default="synth,small,harsh,street,motion")
    parser.add_argument("--widen", default="1,1.2,1.4,1.6,2", help="comma-separated context factors (1: off)")
    parser.add_argument("--frame-weights", default=None,
                        help="comma-separated weights of the whole photo (0: off; default: the checkpoint's)")
    parser.add_argument("--tta", action="store_true", help="with the flip test-time augmentation, as the service")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from bench_adapt import catalog_embeddings, embed_queries
    from query_recipes import make_queries
    from model import load_model
    from model.training.data import read_data
    from model.training.evaluate import item_ranks, top_k

    factors = [float(f) for f in args.widen.split(",") if f]
    loaded = load_model(args.model)
    net = loaded.model.eval()
    if not net.locates_garments:
        raise SystemExit(f"{args.model}: this model does not locate the garment; nothing to compare")
    shipped = (net.adapter.config.context_widen, net.adapter.config.frame_weight)
    weights = [float(w) for w in args.frame_weights.split(",") if w] if args.frame_weights else [shipped[1]]
    data = read_data("catalog", args.data, split_csv=args.data / "split.csv")
    gallery = data.shop()
    gallery_items = [p.item_id for p in gallery]
    test_photos = [photos[0] for _, photos in sorted(data.split("test").shop_by_item().items())]
    cat = catalog_embeddings(loaded, {}, args.cache, gallery, args.workers)

    for recipe in [r for r in args.recipes.split(",") if r]:
        images, items = make_queries(test_photos, recipe, args.queries)
        for factor, weight in [(f, w) for f in factors for w in weights]:
            set_query_terms(net, factor, weight)
            q = embed_queries(loaded, images, flip=args.tta)
            row = {"recipe": recipe, "context_widen": factor, "frame_weight": weight,
                   "shipped": (factor, weight) == shipped,
                   "tta": "flip" if args.tta else "none", "queries": len(items),
                   **top_k(item_ranks(q, items, cat, gallery_items), (1, 20))}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
