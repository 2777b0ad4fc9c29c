"""`python -m service --index INDEX_DIR [--host H] [--port P]`."""
from __future__ import annotations

from venv_guard import ensure_dependencies

ensure_dependencies("service")

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--index", type=Path, help="index folder (env SNAP2SHOP_INDEX)")
    parser.add_argument("--model", help="override where the index's model is loaded from; it must be the same weights")
    parser.add_argument("--host", help="bind address (env SNAP2SHOP_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (env SNAP2SHOP_PORT, default 8000)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="embedder device (env SNAP2SHOP_DEVICE, default auto)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="env SNAP2SHOP_PRECISION; auto: bf16 on a GPU")
    parser.add_argument("--index-device", choices=("auto", "cpu", "gpu"), help="FAISS device (env SNAP2SHOP_INDEX_DEVICE)")
    parser.add_argument("--max-upload-bytes", type=int, help="env SNAP2SHOP_MAX_UPLOAD_BYTES, default 20 MiB")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    from model import CheckpointError, WeightsUnavailableError

    from indexer.layout import IndexLayoutError
    from indexer.store import IndexOpenError

    from .engine import IncompatibleIndexError, SearchEngine
    from .settings import Settings

    try:
        settings = Settings.from_env(index=args.index, model=args.model, host=args.host, port=args.port,
                                     device=args.device, precision=args.precision, index_device=args.index_device,
                                     max_upload_bytes=args.max_upload_bytes)
        # Loaded before uvicorn starts, so a bad index is one clear line and exit code 2.
        engine = SearchEngine.from_settings(settings)
    except (IndexLayoutError, IndexOpenError, IncompatibleIndexError, CheckpointError,
            WeightsUnavailableError, ValueError, RuntimeError) as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from .app import create_app

    uvicorn.run(create_app(settings, engine), host=settings.host, port=settings.port,
                log_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
