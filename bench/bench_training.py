"""Benchmark: cold-start fine-tuning from catalogue photos only, zero-shot vs fine-tuned top-k.

    python bench/bench_training.py [--data ../shared/data/fashion-products] [--input-size 160]
                                   [--epochs 1] [--max-steps 100] [--out var/bench/catalog.safetensors]

Trains `efficientnet-lite0` in `catalog` mode on the `train` items of split.csv (shopper views are
synthesised from the shop photos), then evaluates both the zero-shot model (ImageNet features at
224 px) and the fine-tuned one: synthesised views of every `test` item searched against all 9,583
catalogue photos. Prints top-k, training img/s and wall times, and writes a JSON + PNG report.
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
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="steps per epoch (default: all items)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--dim", type=int, default=0, help="FC head size (0: no head, the pooled feature itself)")
    parser.add_argument("--pooling", default="max")
    parser.add_argument("--bnneck", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "catalog.safetensors")
    parser.add_argument("--skip-zero-shot", action="store_true")
    args = parser.parse_args()

    from model import load_model
    from model.cpu_runtime import keep_freed_memory
    from model.training.data import read_data
    from model.training.evaluate import DEFAULT_KS, evaluate, write_report
    from model.training.train import TrainConfig, metrics_path, train

    keep_freed_memory()  # as `python -m model train` does
    images, split_csv = args.data / "images", args.data / "split.csv"
    data = read_data("catalog", images, split_csv=split_csv)
    summary = data.summary()
    print(f"catalogue: {json.dumps(summary.get('splits', summary))}")

    started = time.perf_counter()
    train(TrainConfig(data=images, format="catalog", out=args.out, split_csv=split_csv, backbone=args.backbone,
                      input_size=args.input_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      dim=args.dim or None, pooling=args.pooling, bnneck=args.bnneck,
                      device=args.device, workers=args.workers, max_steps_per_epoch=args.max_steps))
    train_s = time.perf_counter() - started
    epochs = [json.loads(line) for line in metrics_path(args.out).read_text().splitlines()]
    epochs = [e for e in epochs if e["event"] == "epoch"]
    train_rate = sum(e["images"] for e in epochs) / sum(e["seconds"] for e in epochs)

    results, eval_s = [], {}
    specs = ([] if args.skip_zero_shot else [args.backbone]) + [str(args.out)]
    for spec in specs:
        t0 = time.perf_counter()
        results.append(evaluate(data, load_model(spec), split="test", device=args.device, workers=args.workers))
        eval_s[spec] = time.perf_counter() - t0
    report = args.out.with_name(args.out.stem + ".evaluation.json")
    write_report(results, report, report.with_suffix(".png"))

    print(f"\ntraining: {sum(e['images'] for e in epochs)} images in {train_s:.0f} s wall, "
          f"{train_rate:.1f} img/s ({args.backbone}, {args.input_size} px, {args.epochs} epoch(s), "
          f"{epochs[-1]['steps']} steps/epoch)")
    print(f"{'model':<48} " + " ".join(f"top-{k:<5}" for k in DEFAULT_KS) + " eval s")
    for spec, result in zip(specs, results):
        print(f"{Path(result['model']).name:<48} " + " ".join(f"{result[f'top{k}']:<6.3f}" for k in DEFAULT_KS)
              + f" {eval_s[spec]:.0f}")
    print(f"({results[0]['queries']} synthesised queries of test items against {results[0]['gallery_items']} items)")
    print(f"report {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
