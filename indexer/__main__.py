"""`python -m indexer build|add|remove|verify|info`: make, change, check and describe a search index.

build   encode a whole catalogue into a new index version
add     encode only new photos (files, or a CSV) and publish them as a new version
remove  publish a version without some items, re-encoding nothing
verify  check that an index's files agree with each other (--deep: with the photos and the model too)
info    print what an index holds

Every change is written beside the live version and published atomically: a writer that fails or is
killed leaves the previous version live and intact.

Vectors live in FAISS (a file in the index folder; the default) or in Milvus (`--store milvus
--milvus-uri URI`, one collection per version; a URI ending in .db is an embedded Milvus Lite file).
"""
from __future__ import annotations

from venv_guard import ensure_dependencies

ensure_dependencies("indexer")

import argparse
import json
import logging
import sqlite3
import sys
from pathlib import Path

from model import DEFAULT_MODEL_SPEC
from model.batch_size import batch_size_arg
from model.config import AdapterConfig


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m indexer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)

    build = verbs.add_parser("build", help="encode catalogue photos into a new index version")
    build.add_argument("--images", type=Path, help="folder of shop photos (searched recursively)")
    build.add_argument("--catalog", type=Path, help="CSV path,item_id[,category,title,...]; paths relative to --images or the CSV")
    build.add_argument("--out", type=Path, required=True, help="index folder (created; replaced atomically)")
    build.add_argument("--model", default=DEFAULT_MODEL_SPEC,
                       help="backbone name (efficientnet-lite0, resnet50[:imagenet|none|PATH], ...) or a .safetensors checkpoint")
    build.add_argument("--index-factory", default="auto",
                       help="FAISS index factory string, or auto (default): exact search (Flat) while it is fast, "
                            "IVF with ~4*sqrt(N) lists and nprobe 16 for larger catalogues; with --store milvus: "
                            "Flat, HNSW<M>, IVF<n>,Flat, IVF<n>,SQ8 or IVF<n>,PQ<m> (the Milvus index of that kind)")
    build.add_argument("--features", default="auto",
                       help="backbone feature maps already on disk: auto (default: the cache `python -m model adapt` "
                            "filled for this checkpoint, if any), off, or a cache folder; photos it does not hold "
                            "exactly (path, bytes, backbone, preprocessing) are encoded as usual")
    _add_store_options(build, building=True)
    _add_encoding_options(build)

    add = verbs.add_parser("add", help="encode new photos and publish them as a new version of an index",
                           description="Photos already in the index (same bytes, under any item) are not "
                                       "encoded again; adding nothing new publishes nothing.")
    add.add_argument("index", type=Path, help="index folder (the one holding `current`)")
    add.add_argument("--images", type=Path,
                     help="folder of new photos (item id = file stem), or the root of --catalog's relative paths")
    add.add_argument("--catalog", type=Path, help="CSV path,item_id[,category,title,...] of the photos to add")
    add.add_argument("--model", default=None,
                     help="where the index's model is now (default: the one its manifest names); "
                          "its weights must be the ones the index was built with")
    _add_store_options(add)
    _add_encoding_options(add)

    remove = verbs.add_parser("remove", help="publish a version of an index without some items")
    remove.add_argument("index", type=Path, help="index folder (the one holding `current`)")
    remove.add_argument("item_ids", nargs="*", metavar="ID", help="item ids to remove, with all their photos")
    remove.add_argument("--item-ids", type=Path, dest="item_ids_file", metavar="FILE",
                        help="file of item ids, one per line (blank lines and # comments ignored)")
    _add_store_options(remove)

    verify = verbs.add_parser("verify", help="check an index's files agree; exit 0 consistent, 1 problems, 2 unusable")
    verify.add_argument("index", type=Path)
    verify.add_argument("--deep", action="store_true",
                        help="also hash every photo and re-embed a sample with the index's model")
    verify.add_argument("--sample", type=_positive_int, default=20, help="photos re-embedded by --deep (default 20)")
    verify.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="for --deep's re-embedding")
    _add_store_options(verify)

    info = verbs.add_parser("info", help="print what an index holds")
    info.add_argument("index", type=Path)
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    _add_store_options(info)
    return parser


def _add_store_options(parser: argparse.ArgumentParser, building: bool = False) -> None:
    if building:
        parser.add_argument("--store", choices=("faiss", "milvus"), default=None,
                            help="where the vectors live: faiss (default; a file in the index folder) or milvus")
        parser.add_argument("--milvus-uri", help="http://host:19530 (Milvus standalone or cluster), or a Milvus Lite "
                                                 "file PATH.db (one process at a time); implies --store milvus")
        parser.add_argument("--collection", help="prefix of the Milvus collection names, one per version "
                                                 "(default snap2shop)")
        return
    parser.add_argument("--store", choices=("faiss", "milvus"), default=None,
                        help="check that the index is held in this store (it is the one its manifest names)")
    parser.add_argument("--milvus-uri", help="where the index's Milvus is reached from here, if not at the URI it "
                                             "was built with")
    parser.add_argument("--collection", help="check that the index's Milvus collections have this prefix")


def _store_override(args: argparse.Namespace):
    from .stores import StoreConfig

    return StoreConfig.override_from(args.store, args.milvus_uri, args.collection)


def _add_encoding_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=batch_size_arg, default="auto",
                        help="photos per forward pass, or auto (default): 16 on the CPU, 64 on a GPU (32 on one "
                             "under 8 GiB); the manifest records the batch used")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast on a GPU, fp32 on the CPU")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: min(4, CPUs))")
    parser.add_argument("--compile", action="store_const", const="inductor", default=None, dest="compile_backend",
                        help="torch.compile the model first (tens of seconds; pays off on large catalogues on a GPU)")
    parser.add_argument("--jpeg-decode", choices=("workers", "device"), default="workers",
                        help="where JPEGs are decoded: in the worker processes (default), or on the model's "
                             "device with torchvision's decode_jpeg (nvJPEG on a GPU) when the CPUs cannot keep up")
    parser.add_argument("--decode-priority", choices=("auto", "idle", "normal"), default="auto",
                        help="auto (default) and normal: the decoding processes run as any process; idle: only on "
                             "CPU time nothing else wants, a few percent faster on an otherwise idle machine, but "
                             "starved (over ten times slower) while another job keeps the cores busy")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: decode and embed on Ray Data (a local Ray, or the cluster at --ray-address); "
                             "needs requirements-ray.txt")
    parser.add_argument("--ray-address", help="a running Ray cluster (ray://host:10001 or host:6379); implies --engine ray")
    parser.add_argument("--ray-actors", type=_positive_int, help="embedding actors (default: one per GPU, else one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_build(args: argparse.Namespace) -> int:
    from .build import BuildOptions, build_index
    from .stores import StoreConfig

    if not args.images and not args.catalog:
        raise SystemExit("error: give --images DIR, --catalog CSV, or both")
    version = build_index(BuildOptions(
        out=args.out, images=args.images, catalog=args.catalog, model_spec=args.model,
        batch_size=args.batch_size, device=args.device, precision=args.precision,
        index_factory=args.index_factory, store=StoreConfig.from_options(args.store, args.milvus_uri, args.collection),
        compile_backend=args.compile_backend, jpeg_decode=args.jpeg_decode,
        decode_priority=args.decode_priority, engine="ray" if args.ray_address else args.engine,
        ray_address=args.ray_address, ray_actors=args.ray_actors,
        workers=args.workers, progress=not args.quiet, features=args.features,
    ))
    from .manifest import read_manifest

    _, manifest = read_manifest(version)
    counts, timings = manifest.counts, manifest.timings
    print(f"indexed {counts.vectors} photos of {counts.items} items into {args.out} "
          f"({version.name}) in {timings['total_s']:.1f}s, {timings['images_per_s']:.1f} img/s")
    _print_skipped(manifest.skipped)
    return 0


def _print_skipped(skipped: list[dict]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} photos:", file=sys.stderr)
        for skip in skipped:
            print(f"  {skip['path']}: {skip['reason']}", file=sys.stderr)


ALREADY_INDEXED_SHOWN = 20  # re-adding a whole catalogue would otherwise print every photo


def cmd_add(args: argparse.Namespace) -> int:
    from .add import AddOptions, add_photos

    result = add_photos(AddOptions(
        index=args.index, images=args.images, catalog=args.catalog, model_spec=args.model, store=_store_override(args),
        batch_size=args.batch_size, device=args.device, precision=args.precision,
        compile_backend=args.compile_backend, jpeg_decode=args.jpeg_decode,
        decode_priority=args.decode_priority, engine="ray" if args.ray_address else args.engine,
        ray_address=args.ray_address, ray_actors=args.ray_actors,
        workers=args.workers, progress=not args.quiet,
    ))
    already = result.already_indexed
    if already:
        print(f"{len(already)} photos already indexed, not added again:", file=sys.stderr)
        for entry in already[:ALREADY_INDEXED_SHOWN]:
            print(f"  {entry['path']}: {entry['reason']}", file=sys.stderr)
        if len(already) > ALREADY_INDEXED_SHOWN:
            print(f"  ... and {len(already) - ALREADY_INDEXED_SHOWN} more", file=sys.stderr)
    _print_skipped(result.skipped)
    if result.version is None:
        unused = f", {len(result.skipped)} could not be added" if result.skipped else ""
        print(f"nothing to add: {len(already)} of the {result.photos_found} photos are already indexed{unused}; "
              f"{args.index} is unchanged ({result.vectors} photos of {result.items} items)")
        return 0
    print(f"added {result.added_vectors} photos ({result.added_items} new items) to {args.index} "
          f"({result.version.name}); it now holds {result.vectors} photos of {result.items} items")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from .remove import read_item_ids_file, remove_items
    from .errors import IndexUpdateError

    item_ids = list(args.item_ids) + (read_item_ids_file(args.item_ids_file) if args.item_ids_file else [])
    if not item_ids:
        raise IndexUpdateError("give item ids, or --item-ids FILE with one id per line")
    result = remove_items(args.index, item_ids, _store_override(args))
    if result.unknown_items:
        print(f"{len(result.unknown_items)} item ids are not in the index, ignored: "
              f"{', '.join(result.unknown_items)}", file=sys.stderr)
    print(f"removed {len(result.removed_items)} items ({result.removed_vectors} photos) from {args.index} "
          f"({result.version.name}); it now holds {result.vectors} photos of {result.items} items")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .manifest import read_manifest
    from .verify import verify_index

    version_dir, manifest = read_manifest(args.index)
    problems = verify_index(args.index, deep=args.deep, sample=args.sample, device=args.device,
                            store=_store_override(args))
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"{args.index} ({version_dir.name}): {len(problems)} problems", file=sys.stderr)
        return 1
    counts = manifest.counts
    print(f"ok: {args.index} ({version_dir.name}) is consistent: {counts.vectors} vectors, "
          f"{counts.items} items" + ("; photos hashed and a sample re-embedded" if args.deep else ""))
    return 0


def _describe_query_head(head: AdapterConfig | None) -> str:
    if head is None:
        return "none (queries are embedded like catalogue photos)"
    crop = "garment crop" + (f" + {head.context_widen:g}x context" if head.context_widen != 1.0 else "") + (
        f" + whole photo x{head.frame_weight:g}" if head.frame_weight else "")
    parts = [f"adapted, {head.dim} dims"] + ([crop] if head.locate else []) + (
        ["foreground pooling"] if head.foreground else []) + (["per-side residual"] if head.residual else [])
    return ", ".join(parts)


def cmd_info(args: argparse.Namespace) -> int:
    from .store import open_index

    opened = open_index(args.index, _store_override(args))
    manifest = opened.manifest
    store = opened.store.describe()
    opened.close()
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
        return 0
    counts = manifest.counts
    lines = [
        ("version", opened.version_dir.name),
        ("built", manifest.built_at),
        *([("updated", f"{manifest.updated_at} ({len(manifest.history)} changes since the build)")]
          if manifest.updated_at else []),
        ("model", f"{manifest.model.spec} (weights sha256 {manifest.model.checksum[:12]})"),
        ("embedding", f"{manifest.dim} dims, {manifest.metric}, {store['kind']} '{manifest.index_factory}'"
                      + (f" as {store['index_type']} in collection {store['collection']}" if "collection" in store
                         else "")),
        ("preprocessing", json.dumps(manifest.preprocessing.to_dict())),
        ("query preprocessing", json.dumps(manifest.query_preprocessing.to_dict())),
        ("query head", _describe_query_head(manifest.query_adapter)),
        ("catalogue", manifest.catalog.image_root),
        ("vectors", counts.vectors),
        ("items", counts.items),
        ("skipped", counts.skipped),
        ("encode rate", f"{manifest.timings['images_per_s']} img/s on {manifest.environment['device']}"
                        + (f", batch {batch}" if (batch := manifest.encode.get("batch_size")) else "")),
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

    from model.catalog import CatalogError
    from .layout import IndexLayoutError
    from .errors import IndexBuildError, IndexOpenError, IndexUpdateError

    verbs = {"build": cmd_build, "add": cmd_add, "remove": cmd_remove, "verify": cmd_verify, "info": cmd_info}
    try:
        return verbs[args.verb](args)
    except (CatalogError, IndexLayoutError, IndexBuildError, IndexOpenError, IndexUpdateError, CheckpointError,
            WeightsUnavailableError, ValueError, RuntimeError, OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the previous index (if any) is unchanged", file=sys.stderr)
        return 130
    except Exception as exc:
        if not type(exc).__module__.startswith("pymilvus"):
            raise
        print(f"error: Milvus refused: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from model.cpu_runtime import keep_freed_memory

    keep_freed_memory()  # the process's own allocator policy, so only when run as a program
    sys.exit(main())
