"""`python -m indexer build|info`."""
from __future__ import annotations

from venv_guard import ensure_dependencies

ensure_dependencies("indexer")

import argparse
import json
import logging
import sys
from pathlib import Path

from model import DEFAULT_MODEL_SPEC


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m indexer", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    build = verbs.add_parser("build", help="encode catalogue photos into a new index version")
    build.add_argument("--images", type=Path, help="folder of shop photos (searched recursively)")
    build.add_argument("--catalog", type=Path, help="CSV path,item_id[,category,title,...]; paths relative to --images or the CSV")
    build.add_argument("--out", type=Path, required=True, help="index folder (created; replaced atomically)")
    build.add_argument("--model", default=DEFAULT_MODEL_SPEC,
                       help="backbone name (efficientnet-lite0, resnet50[:imagenet|none|PATH], ...) or a .safetensors checkpoint")
    build.add_argument("--batch-size", type=_positive_int, default=32)
    build.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    build.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="auto: bf16 autocast on a GPU, fp32 on the CPU")
    build.add_argument("--index-factory", default="Flat", help="FAISS index factory string (default: exact search)")
    build.add_argument("--workers", type=int, default=None, help="decoding processes (default: min(4, CPUs))")
    build.add_argument("--quiet", action="store_true", help="no progress bar")

    info = verbs.add_parser("info", help="print what an index holds")
    info.add_argument("index", type=Path)
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    return parser


def cmd_build(args: argparse.Namespace) -> int:
    from .build import BuildOptions, build_index

    if not args.images and not args.catalog:
        raise SystemExit("error: give --images DIR, --catalog CSV, or both")
    version = build_index(BuildOptions(
        out=args.out, images=args.images, catalog=args.catalog, model_spec=args.model,
        batch_size=args.batch_size, device=args.device, precision=args.precision,
        index_factory=args.index_factory,
        workers=args.workers, progress=not args.quiet,
    ))
    from .store import read_manifest

    _, manifest = read_manifest(version)
    counts, timings = manifest["counts"], manifest["timings"]
    print(f"indexed {counts['vectors']} photos of {counts['items']} items into {args.out} "
          f"({version.name}) in {timings['total_s']:.1f}s, {timings['images_per_s']:.1f} img/s")
    if manifest["skipped"]:
        print(f"skipped {len(manifest['skipped'])} photos:", file=sys.stderr)
        for skip in manifest["skipped"]:
            print(f"  {skip['path']}: {skip['reason']}", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .store import open_index

    opened = open_index(args.index)
    manifest = opened.manifest
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    counts = manifest["counts"]
    lines = [
        ("version", opened.version_dir.name),
        ("built", manifest["built_at"]),
        ("model", f"{manifest['model']['spec']} (weights sha256 {manifest['model']['checksum'][:12]})"),
        ("embedding", f"{manifest['dim']} dims, {manifest['metric']}, faiss '{manifest['index_factory']}'"),
        ("preprocessing", json.dumps(manifest["preprocessing"])),
        ("catalogue", manifest["catalog"]["image_root"]),
        ("vectors", counts["vectors"]),
        ("items", counts["items"]),
        ("skipped", counts["skipped"]),
        ("encode rate", f"{manifest['timings']['images_per_s']} img/s on {manifest['environment']['device']}"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build loaded is noise here
    args = make_parser().parse_args(argv)
    from model import CheckpointError, WeightsUnavailableError

    from .catalog import CatalogError
    from .layout import IndexLayoutError
    from .store import IndexBuildError, IndexOpenError

    try:
        return {"build": cmd_build, "info": cmd_info}[args.verb](args)
    except (CatalogError, IndexLayoutError, IndexBuildError, IndexOpenError, CheckpointError,
            WeightsUnavailableError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the previous index (if any) is unchanged", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
