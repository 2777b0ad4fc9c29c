"""`python -m model train|adapt|evaluate`."""
from __future__ import annotations

from venv_guard import ensure_dependencies

ensure_dependencies("model")

import argparse
import logging
import sys
from pathlib import Path

FORMATS = ("deepfashion", "pairs", "catalog")


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True,
                        help="deepfashion: the dataset root; pairs: the CSV; catalog: a photo folder or the indexer's CSV")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--split-csv", type=Path, help="CSV path,item_id,split (e.g. fashion-products' split.csv)")
    parser.add_argument("--no-crop", dest="crop", action="store_false", help="ignore DeepFashion's garment boxes")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, default=2, help="data loading processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def make_parser() -> argparse.ArgumentParser:
    from .training.train import TrainConfig

    defaults = TrainConfig(data=Path("."), format="catalog", out=Path("x"))
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="fine-tune an embedder with the triplet loss")
    _add_data_args(train)
    train.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    train.add_argument("--backbone", default=defaults.backbone)
    train.add_argument("--weights", default=defaults.weights, help="imagenet, none, or a local weights file")
    train.add_argument("--dim", type=int, default=defaults.dim or 0, help="FC head size (default 0: no head, the pooled backbone feature)")
    train.add_argument("--input-size", type=int, default=None, help="pixels (default: the backbone's)")
    train.add_argument("--pooling", choices=("max", "gem", "avg"), default=defaults.pooling)
    train.add_argument("--bnneck", action="store_true", help="BNNeck before the head (strong-baseline style)")
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per batch")
    train.add_argument("--views-per-item", type=int, default=defaults.views_per_item,
                       help="query views per item in batch-hard batches (K)")
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--margin", type=float, default=defaults.margin)
    train.add_argument("--negatives", choices=("batch-hard", "adjacent", "hard"), default=defaults.negatives)
    train.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue from OUT and its .state.pt")
    train.add_argument("--max-steps-per-epoch", type=int, default=None)

    _add_adapt_parser(verbs)

    evaluate = verbs.add_parser("evaluate", help="top-k retrieval accuracy (DeepFashion protocol)")
    _add_data_args(evaluate)
    evaluate.add_argument("--model", action="append", required=True,
                          help="model spec; repeat to compare several on one plot")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--queries-per-item", type=int, default=1, help="synthesised queries per item (catalog)")
    evaluate.add_argument("--out", type=Path, default=Path("evaluation.json"), help="JSON report; the PNG goes beside it")
    return parser


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _positive(text: str) -> int:
    return _whole_number(text, 1)


def _count(text: str) -> int:
    return _whole_number(text, 0)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _within(low: float, high: float):
    """An argparse type: a number from `low` (the setting's "off") to `high`, both included."""
    def parse(text: str) -> float:
        value = _number(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} (off) and {high:g}, got {text}")
        return value

    return parse


def _add_adapt_parser(verbs) -> None:
    from .training.adapt import HEADS, LITE_TUNE_BLOCKS, AdaptConfig
    from .batch_size import batch_size_arg
    from .config import MAX_CONTEXT_WIDEN, MAX_FRAME_WEIGHT
    from .cpu_runtime import DECODE_PRIORITY_CHOICES

    defaults = AdaptConfig(data=Path("."), format="catalog", out=Path("x.safetensors"))
    adapt = verbs.add_parser("adapt", help="fit a head on the frozen backbone's cached features (CPU minutes)")
    _add_data_args(adapt)
    adapt.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    adapt.add_argument("--backbone", default=defaults.backbone)
    adapt.add_argument("--weights", default=defaults.weights, help="imagenet, none, or a local weights file")
    adapt.add_argument("--input-size", type=_positive, default=None,
                       help="catalogue-side pixels (default: the backbone's); the garment crop of a query too")
    adapt.add_argument("--query-size", type=_positive, default=defaults.query_size,
                       help=f"pixels of a shopper's photo where the garment is found (default {defaults.query_size})")
    adapt.add_argument("--view-size", type=_positive, default=defaults.view_size,
                       help=f"pixels of the training views' frames (default {defaults.view_size})")
    adapt.add_argument("--views", type=_positive, default=defaults.views,
                       help=f"synthesised shopper's views per item, catalog format (default {defaults.views})")
    adapt.add_argument("--box-views", type=_count, default=defaults.box_views,
                       help="of the --views sets, this many are cropped at the box of the synthesiser's mask "
                            "instead of a box found by a frame pass: about 56%% of a set's cost, but measured worse on small "
                            "garments (README; default %(default)s)")
    adapt.add_argument("--view-styles", default=",".join(defaults.view_styles),
                       help="comma-separated synthesiser styles, view set n in style n mod their number: "
                            "default, hard, company, night (default %(default)s)")
    adapt.add_argument("--cache", type=Path, default=None,
                       help="feature cache folder (default ~/.cache/snap2shop/adapt); a killed run resumes from it")
    adapt.add_argument("--batch-size", type=batch_size_arg, default=defaults.batch_size,
                       help="photos per backbone pass, or auto (default): 16 on the CPU, 64 on a GPU")
    adapt.add_argument("--decode-priority", choices=DECODE_PRIORITY_CHOICES, default=defaults.decode_priority,
                       help="idle: the decoding and synthesising processes run only on CPU time the model leaves "
                            "(faster on an idle machine, starved while another job keeps the cores busy); normal: as "
                            "any process; auto (default): idle while other processes leave over half the cores idle")
    adapt.add_argument("--dim", type=_positive, default=defaults.dim, help="embedding dims after whitening")
    adapt.add_argument("--head", choices=HEADS, default=defaults.head,
                       help="whiten, residual (whitening + per-side InfoNCE heads) or auto: the better on held-out items")
    adapt.add_argument("--no-foreground", dest="foreground", action="store_false",
                       help="plain GeM instead of foreground-weighted pooling (implies --no-locate)")
    adapt.add_argument("--no-locate", dest="locate", action="store_false",
                       help="embed the whole query instead of the garment crop")
    adapt.add_argument("--context-widen", type=_within(1, MAX_CONTEXT_WIDEN), default=defaults.context_widen,
                       help="the query also embeds its garment box widened this many times, averaged with the "
                            "crop; kept only if held-out items gain (default %(default)s; 1: off)")
    adapt.add_argument("--frame-weight", type=_within(0, MAX_FRAME_WEIGHT), default=defaults.frame_weight,
                       help="the query also adds the whole photo's embedding with this weight (a crop weighs 1); "
                            "kept only if held-out items do not lose (default %(default)s; 0: off)")
    adapt.add_argument("--tune-blocks", type=_count, default=None,
                       help="backbone blocks to tune on the cached trunk activations; 0: a frozen backbone "
                            f"(default: {LITE_TUNE_BLOCKS} for efficientnet-lite, 0 for the others)")
    adapt.add_argument("--tune-epochs", type=_positive, default=defaults.tune_epochs,
                       help="epochs of that tuning (default %(default)s)")
    adapt.add_argument("--tune-lr", type=_fraction, default=defaults.tune_lr,
                       help="its peak learning rate, one-cycle (default %(default)s; 1e-4 diverged)")
    adapt.add_argument("--shard-rows", type=_positive, default=defaults.shard_rows,
                       help="rows per cache shard, the most a killed run loses (default %(default)s)")
    adapt.add_argument("--seed", type=int, default=0)


def cmd_adapt(args: argparse.Namespace) -> int:
    from .training.adapt import AdaptConfig, adapt

    config = AdaptConfig(
        data=args.data, format=args.format, out=args.out, split_csv=args.split_csv, crop=args.crop,
        backbone=args.backbone, weights=args.weights, input_size=args.input_size, query_size=args.query_size,
        view_size=args.view_size, views=args.views, box_views=args.box_views,
        view_styles=tuple(v for v in args.view_styles.split(",") if v),
        cache=args.cache, device=args.device, batch_size=args.batch_size,
        workers=args.workers, decode_priority=args.decode_priority, dim=args.dim, head=args.head,
        foreground=args.foreground,
        locate=args.locate and args.foreground, context_widen=args.context_widen,
        frame_weight=args.frame_weight, shard_rows=args.shard_rows,
        seed=args.seed,
        tune_blocks=args.tune_blocks, tune_epochs=args.tune_epochs, tune_lr=args.tune_lr,
        progress=not args.quiet,
    )
    out = adapt(config)
    print(f"checkpoint {out}\nreport {out.with_name(out.stem + '.adapt.json')}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.train import TrainConfig, curve_path, metrics_path, train

    config = TrainConfig(
        data=args.data, format=args.format, out=args.out, split_csv=args.split_csv, crop=args.crop,
        backbone=args.backbone, weights=args.weights, dim=args.dim or None, input_size=args.input_size,
        pooling=args.pooling, bnneck=args.bnneck, epochs=args.epochs, batch_size=args.batch_size,
        views_per_item=args.views_per_item, lr=args.lr, margin=args.margin, negatives=args.negatives,
        device=args.device, precision=args.precision, workers=args.workers, seed=args.seed, resume=args.resume,
        max_steps_per_epoch=args.max_steps_per_epoch, progress=not args.quiet,
    )
    out = train(config)
    print(f"checkpoint {out}\nmetrics {metrics_path(out)}\nloss curve {curve_path(out)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .training.data import read_data
    from .training.evaluate import DEFAULT_KS, evaluate, write_report

    data = read_data(args.format, args.data, split_csv=args.split_csv, crop=args.crop)
    results = []
    for spec in args.model:
        result = evaluate(data, load_model(spec), split=args.split, device=args.device, workers=args.workers,
                          queries_per_item=args.queries_per_item, progress=not args.quiet)
        results.append(result)
        print(f"{result['model']}: " + "  ".join(f"top-{k} {result[f'top{k}']:.4f}" for k in DEFAULT_KS)
              + f"  ({result['queries']} queries, {result['gallery_items']} gallery items)")
    png = args.out.with_suffix(".png")
    write_report(results, args.out, png)
    print(f"report {args.out}\ncurve {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    args = make_parser().parse_args(argv)
    from .backbones import WeightsUnavailableError
    from .checkpoint import CheckpointError

    try:
        return {"train": cmd_train, "adapt": cmd_adapt, "evaluate": cmd_evaluate}[args.verb](args)
    except (CheckpointError, WeightsUnavailableError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last completed epoch's checkpoint is intact (--resume continues)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    from model.cpu_runtime import keep_freed_memory

    keep_freed_memory()  # the process's own allocator policy, so only when run as a program
    sys.exit(main())
