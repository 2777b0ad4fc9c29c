"""`python -m service --index INDEX_DIR [--host H] [--port P]`."""
from __future__ import annotations

from venv_guard import ensure_dependencies

ensure_dependencies("service")

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from model.batch_size import batch_size_arg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--index", type=Path, help="index folder (env SNAP2SHOP_INDEX)")
    parser.add_argument("--image-root", type=Path,
                        help="folder the catalogue photos are in now, when not where the index was built "
                             "(env SNAP2SHOP_IMAGE_ROOT; default: the root in the index manifest)")
    parser.add_argument("--model", help="override where the index's model is loaded from; it must be the same weights")
    parser.add_argument("--host", help="bind address (env SNAP2SHOP_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env SNAP2SHOP_PORT, default 8000)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="embedder device (env SNAP2SHOP_DEVICE, default auto)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="env SNAP2SHOP_PRECISION; auto: bf16 on a GPU")
    parser.add_argument("--index-device", choices=("auto", "cpu", "gpu"), help="FAISS device (env SNAP2SHOP_INDEX_DEVICE)")
    parser.add_argument("--max-upload-bytes", type=int, help="env SNAP2SHOP_MAX_UPLOAD_BYTES, default 20 MiB")
    parser.add_argument("--max-in-flight", type=int, help="searches at once before 503 (env SNAP2SHOP_MAX_IN_FLIGHT, default 64)")
    parser.add_argument("--batch-max-size", type=batch_size_arg,
                        help="photos per forward pass at most (env SNAP2SHOP_BATCH_MAX_SIZE), or auto (default): "
                             "16 on the CPU, 64 on a GPU")
    parser.add_argument("--reload-poll-s", type=float, help="seconds between looks for a new index version; 0: never (default 2)")
    parser.add_argument("--log-format", choices=("json", "text"), help="env SNAP2SHOP_LOG_FORMAT, default json")
    parser.add_argument("--tta", choices=("auto", "none", "flip"),
                        help="test-time augmentation of uploads (env SNAP2SHOP_TTA); auto (default): "
                             "flip for adapted models, none for the zero-shot one")
    parser.add_argument("--store", choices=("faiss", "milvus"),
                        help="check the index's vector store is this one (env SNAP2SHOP_STORE; the manifest names it)")
    parser.add_argument("--milvus-uri", help="where the index's Milvus is reached from here, if not where the indexer "
                                             "reached it (env SNAP2SHOP_MILVUS_URI), e.g. http://milvus:19530")
    parser.add_argument("--collection", help="check the index's Milvus collection prefix (env SNAP2SHOP_COLLECTION)")
    args = parser.parse_args(argv)

    from model import CheckpointError, WeightsUnavailableError

    from indexer.layout import IndexLayoutError
    from indexer.errors import IndexOpenError

    from model.cpu_runtime import keep_freed_memory, single_threaded_torch

    from .engine import IncompatibleIndexError, SearchEngine
    from .observability import configure_logging
    from .settings import Settings

    try:
        settings = Settings.from_env(index=args.index, image_root=args.image_root, model=args.model,
                                     host=args.host, port=args.port, device=args.device, precision=args.precision,
                                     index_device=args.index_device,
                                     max_upload_bytes=args.max_upload_bytes, max_in_flight=args.max_in_flight,
                                     batch_max_size=args.batch_max_size, reload_poll_s=args.reload_poll_s,
                                     log_format=args.log_format, store=args.store, milvus_uri=args.milvus_uri,
                                     collection=args.collection, tta=args.tta)
    except ValueError as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    keep_freed_memory()
    # Everything but the embedding worker runs torch single-threaded, the model load included: see
    # model/cpu_runtime. The worker takes torch's default thread count unless one is set.
    default_threads = single_threaded_torch()
    settings = replace(settings, torch_threads=settings.torch_threads or default_threads)
    logging.getLogger("snap2shop.service").info("settings: %r", settings)
    try:
        # Loaded before uvicorn starts, so a bad index is one clear line and exit code 2.
        engine = SearchEngine.from_settings(settings)
    except (IndexLayoutError, IndexOpenError, IncompatibleIndexError, CheckpointError,
            WeightsUnavailableError, ValueError, RuntimeError, OSError) as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from .app import create_app

    # log_config=None keeps our handlers (JSON lines); the app logs each request itself, with its id.
    uvicorn.run(create_app(settings, engine), host=settings.host, port=settings.port,
                log_level=settings.log_level, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
