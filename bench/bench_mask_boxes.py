"""Benchmark: how far an adapted model's located garment boxes are off the synthesiser's mask boxes.

    python bench/bench_mask_boxes.py --model ADAPTED [--data ../shared/data/fashion-products]
        [--views 400] [--style default]

Views of `test` items (their first shop photo, evaluation's own seeds) are synthesised with their
exact product masks; the model finds the garment as the service does (model.locate_garments on the
query tensor at the model's query size) and the mask's box is read by the same rule
(model.training.adapt_data.mask_box). Printed: the mean and standard deviation of the centre's
shift in box sides (x, y) and of log(located side / mask side): what `MASK_BOX_JITTER` is set from,
so that mask-box view sets (`adapt --box-views`) are cropped as loosely as served queries are.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SEED = 81_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an adapted checkpoint that locates the garment")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-products")
    parser.add_argument("--views", type=int, default=400)
    parser.add_argument("--style", default="default", help="the synthesiser's style (synthesis.VIEW_STYLES)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from model import load_model
    from model.preprocessing import build_transform
    from model.synthesis import VIEW_STYLES, ConsumerViewSynthesizer
    from model.training.adapt_data import mask_box
    from model.training.data import read_data
    from model.training.views import load_photo

    loaded = load_model(args.model)
    net = loaded.model.eval()
    if not net.locates_garments:
        raise SystemExit(f"{args.model}: this model does not locate the garment")
    prep, margin = loaded.config.query_prep, net.adapter.config.crop_margin
    transform = build_transform(prep)
    synth = ConsumerViewSynthesizer(VIEW_STYLES[args.style])
    data = read_data("catalog", args.data, split_csv=args.data / "split.csv")
    photos = [p[0] for _, p in sorted(data.split("test").shop_by_item().items())][:args.views]
    located, masked = [], []
    for start in range(0, len(photos), 16):
        views, masks = zip(*(synth.compose(load_photo(p), random.Random(SEED + start + i))
                             for i, p in enumerate(photos[start:start + 16])))
        with torch.inference_mode():
            _, boxes = net.locate_garments(torch.stack([transform(v) for v in views]))
        located.append(boxes.numpy())
        masked.extend(mask_box(m, prep.input_size, margin) for m in masks)
    located, masked = np.concatenate(located), np.stack(masked)
    side = masked[:, 2] - masked[:, 0]
    shift = ((located[:, :2] + located[:, 2:]) - (masked[:, :2] + masked[:, 2:])) / 2 / side[:, None]
    log_side = np.log((located[:, 2] - located[:, 0]) / side)
    whole = np.all(np.isclose(located, [0, 0, 1, 1]), axis=1)
    print(json.dumps({"views": len(located), "style": args.style, "query_size": prep.input_size,
                      "not_found": int(whole.sum()),
                      "shift_mean": np.round(shift[~whole].mean(0), 4).tolist(),
                      "shift_std": np.round(shift[~whole].std(0), 4).tolist(),
                      "log_side_mean": round(float(log_side[~whole].mean()), 4),
                      "log_side_std": round(float(log_side[~whole].std()), 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
