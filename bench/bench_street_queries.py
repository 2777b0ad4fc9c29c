"""Benchmark: top-k on queries from a second recipe, so results are not tuned to one synthesiser.

    python bench/bench_street_queries.py --model CKPT [--model efficientnet-lite0] [--data ../shared/data/fashion-products]

The same protocol as `python -m model evaluate --format catalog` (every `test` item searched among all
catalogue photos), but each query is made by `demo.synth.street_view` (crop, tilt, colour and light
shift, blur, noise) instead of the training synthesiser.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fashion-products"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from demo.synth import street_view
    from model import load_model
    from model.training.data import read_data
    from model.training.evaluate import build_protocol, item_ranks, top_k
    from model.inference import plan_inference, prepare_model, resolve_device
    from model.training.views import embed_views

    data = read_data("catalog", args.data / "images", split_csv=args.data / "split.csv")
    protocol = build_protocol(data, "test")
    plan = plan_inference(resolve_device("cpu"))
    for spec in args.model:
        started = time.perf_counter()
        loaded = load_model(spec)
        model = prepare_model(loaded.model, plan)
        prep = loaded.config.preprocessing
        queries = embed_views(model, plan, protocol.queries, prep, street_view, 64, args.workers)
        gallery = embed_views(model, plan, protocol.gallery, prep, None, 64, args.workers)
        ranks = item_ranks(queries, protocol.query_items, gallery, protocol.gallery_items)
        print(spec, json.dumps(top_k(ranks, (1, 5, 10, 20, 50))), f"{time.perf_counter() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
