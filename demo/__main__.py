"""`python -m demo run|generate`: the out-of-the-box demo on a synthetic catalogue.

`run` makes what is missing (catalogue; a model adapted to it on the CPU with `python -m model adapt`,
unless --zero-shot; the index) and serves it.
"""
from __future__ import annotations

from venv_guard import ensure_dependencies

ensure_dependencies("demo")

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_DIR = Path("var/demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    gen = verbs.add_parser("generate", help="write a synthetic catalogue (photos + catalog.csv)")
    gen.add_argument("--out", type=Path, default=DEFAULT_DIR / "catalog")
    gen.add_argument("--items", type=int, default=120)
    gen.add_argument("--photos-per-item", type=int, default=2)
    gen.add_argument("--size", type=int, default=320)
    gen.add_argument("--seed", type=int, default=0)
    run = verbs.add_parser("run", help="generate the catalogue and index if missing, then serve them")
    run.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    run.add_argument("--items", type=int, default=120)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--rebuild", action="store_true", help="regenerate the catalogue and rebuild the index")
    run.add_argument("--zero-shot", action="store_true",
                     help="index with the zero-shot ImageNet model instead of one adapted to the catalogue")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    from .synth import generate_catalog

    if args.verb == "generate":
        csv_path = generate_catalog(args.out, n_items=args.items, photos_per_item=args.photos_per_item,
                                    size=args.size, seed=args.seed)
        print(f"wrote {csv_path}")
        return 0

    catalog_dir, index_dir = args.dir / "catalog", args.dir / "index"
    csv_path = catalog_dir / "catalog.csv"
    if args.rebuild or not csv_path.is_file():
        print(f"generating a synthetic catalogue of {args.items} items in {catalog_dir}")
        generate_catalog(catalog_dir, n_items=args.items, photos_per_item=2, size=320, seed=0)
    model = "efficientnet-lite0"
    if not args.zero_shot:
        model = str(args.dir / "adapted.safetensors")
        if args.rebuild or not Path(model).is_file():
            from model.__main__ import main as model_main

            print("adapting the model to the catalogue on the CPU (python -m model adapt)")
            status = model_main(["adapt", "--data", str(csv_path), "--format", "catalog", "--out", model,
                                 "--cache", str(args.dir / "adapt-cache")])
            if status:
                return status
    if args.rebuild or not (index_dir / "current").exists() or _index_model(index_dir) != Path(model).name:
        from indexer.__main__ import main as indexer_main

        status = indexer_main(["build", "--catalog", str(csv_path), "--out", str(index_dir), "--model", model])
        if status:
            return status
    print(f"\nsearch it:  curl -F image=@{catalog_dir}/images/sku-0001_0.jpg "
          f"'http://{args.host}:{args.port}/search?k=5'\n")
    from service.__main__ import main as service_main

    # A person watches the demo in a terminal: readable log lines rather than the JSON ones for collectors.
    return service_main(["--index", str(index_dir), "--host", args.host, "--port", str(args.port),
                         "--log-format", "text"])


def _index_model(index_dir: Path) -> str:
    """The file name of the model the live index was built with ('' when unreadable)."""
    from indexer.errors import IndexOpenError
    from indexer.layout import IndexLayoutError
    from indexer.manifest import read_manifest

    try:
        return Path(read_manifest(index_dir)[1].model.spec.split(":")[0]).name
    except (IndexOpenError, IndexLayoutError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
