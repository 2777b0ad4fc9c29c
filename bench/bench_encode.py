"""Indexer throughput against its ceiling: end-to-end img/s from files ÷ the model's own img/s.

    python bench/bench_encode.py [--images ../shared/data/fashion-products/images] [--limit N]
                                 [--large 1024] [--model efficientnet-lite0] [--batch-size auto|N]
                                 [--workers 0,1,2] [--compile] [--jpeg-decode workers|device]
                                 [--decode-priority auto|idle|normal] [--busy N]
                                 [--json out.json]

Model-only: forward passes on tensors already in memory, same model, batch and precision.
End-to-end: `indexer.encode.encode_paths` on the photo files (read, sha256, decode, preprocess,
forward), as `python -m indexer build` runs it. With `--large S`, the same photos re-encoded at S px
on the longer side (JPEG, quality 90) are measured too: there reduced-size JPEG decoding (Pillow's
draft mode) is what keeps decoding from eating the model's CPU time.

With `--busy N`, N other processes spin on the CPU (pure Python, one core each) for the whole
measurement, ceiling included: the indexer beside another job, where `--decode-priority idle`
starves. They are stopped when the benchmark ends, by error or Ctrl-C too.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "fashion-products" / "images"


def _spin() -> None:
    """A busy loop standing in for another job on the machine."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    try:  # and should the parent be killed outright, the kernel stops us (Linux's PR_SET_PDEATHSIG)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    while True:
        pass


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[multiprocessing.Process]]:
    """`count` processes keeping one core each busy while the block runs; killed when it ends, however."""
    # spawn, not fork: torch's threads may already run in this process, and a forked copy of a
    # threaded process can hang on a lock one of them held; a fresh interpreter imports only stdlib.
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=_spin, name=f"busy-{n}", daemon=True) for n in range(count)]
    try:
        for spinner in spinners:
            spinner.start()
        yield spinners
    finally:
        for spinner in spinners:
            if spinner.pid is not None:
                spinner.kill()
        for spinner in spinners:
            if spinner.pid is not None:
                spinner.join(10)


def model_only_rate(loaded, plan, batch_size: int, images: int) -> float:
    import torch

    from model.inference import embed_batch, prepare_model

    size = loaded.config.preprocessing.input_size
    net = prepare_model(loaded.model, plan)
    batch = torch.randn(batch_size, 3, size, size)
    embed_batch(net, batch, plan)  # warm-up: allocator, kernels
    done, started = 0, time.perf_counter()
    while done < images:
        embed_batch(net, batch, plan)
        done += batch_size
    return done / (time.perf_counter() - started)


def end_to_end_rate(paths: list[Path], loaded, plan, batch_size: int | str, workers: int,
                    jpeg_decode: str = "workers", decode_priority: str = "auto") -> tuple[float, dict]:
    from indexer.encode import encode_paths

    result = encode_paths(paths, loaded, batch_size=batch_size, device=plan.device, workers=workers,
                          progress=False, plan=plan, jpeg_decode=jpeg_decode, decode_priority=decode_priority)
    if result.failures:
        raise SystemExit(f"{len(result.failures)} photos failed, e.g. {result.failures[0]}")
    return len(paths) / result.timings["wall_s"], result.timings


def re_encode(paths: list[Path], folder: Path, longer_side: int) -> list[Path]:
    from PIL import Image

    out = []
    for path in paths:
        with Image.open(path) as img:
            scale = longer_side / max(img.size)
            big = img.convert("RGB").resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        target = folder / f"{path.stem}.jpg"
        big.save(target, "JPEG", quality=90)
        out.append(target)
    return out


def main() -> int:
    from model.batch_size import batch_size_arg

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit", type=int, help="only the first N photos")
    parser.add_argument("--large", type=int, default=1024, help="also re-encode to this many px (0: skip)")
    parser.add_argument("--large-limit", type=int, default=1000, help="photos re-encoded for --large")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=batch_size_arg, default="auto",
                        help="photos per forward pass, or auto (default): the indexer's rule for the device")
    parser.add_argument("--workers", default="1,2", help="decoding processes to try, comma-separated")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_const", const="inductor", default=None,
                        help="torch.compile the model, for both the ceiling and the end-to-end run")
    parser.add_argument("--jpeg-decode", choices=("workers", "device"), default="workers",
                        help="device: JPEGs decoded by torchvision on the model's device (nvJPEG on a GPU)")
    parser.add_argument("--decode-priority", choices=("auto", "idle", "normal"), default="auto",
                        help="the decoding processes' CPU priority, as `indexer build --decode-priority`")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="N busy-loop processes (one core each) run through the measurement: a busy machine")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-keep-freed-memory", action="store_true",
                        help="leave glibc's malloc as it is (the indexer CLI tunes it: model/cpu_runtime.py)")
    args = parser.parse_args()
    if args.busy < 0:
        parser.error(f"--busy must be 0 or more, got {args.busy}")

    import torch

    from model.cpu_runtime import keep_freed_memory

    malloc_tuned = not args.no_keep_freed_memory and keep_freed_memory()

    from model.catalog import discover_images
    from model import load_model
    from model.batch_size import describe_batch_size, resolve_batch_size
    from model.inference import plan_inference, resolve_device

    paths = discover_images(args.images)[: args.limit]
    loaded = load_model(args.model)
    plan = plan_inference(resolve_device(args.device), args.precision, args.compile)
    batch_size = resolve_batch_size(args.batch_size, plan.device)
    sets = [("fashion-products", paths)]
    scratch = tempfile.TemporaryDirectory(prefix="snap2shop-large-")
    if args.large:
        sets.append((f"{args.large}px re-encodes", re_encode(paths[: args.large_limit], Path(scratch.name), args.large)))

    def ceiling_now() -> float:
        return model_only_rate(loaded, plan, batch_size, images=max(640, 20 * batch_size))

    rows = []
    try:
        with busy_processes(args.busy):
            for name, photos in sets:
                for workers in (int(w) for w in args.workers.split(",")):
                    # This machine's speed drifts by several percent over minutes: the ceiling is
                    # measured right before and right after each run and averaged.
                    before = ceiling_now()
                    rate, timings = end_to_end_rate(photos, loaded, plan, batch_size, workers, args.jpeg_decode,
                                                    args.decode_priority)
                    ceiling = (before + ceiling_now()) / 2
                    rows.append({"photos": name, "count": len(photos), "workers": workers,
                                 "img_per_s": round(rate, 2), "model_only_img_per_s": round(ceiling, 2),
                                 "ratio": round(rate / ceiling, 3), "decode_s_total": timings["decode_preprocess_s_total"],
                                 "forward_s": timings["forward_s"]})
                    print(f"{name:<22} {len(photos):>6} photos  workers={workers}  {rate:7.2f} img/s  "
                          f"model-only {ceiling:7.2f} img/s  ratio {rate / ceiling:.3f}", flush=True)
    finally:
        scratch.cleanup()
    print(f"{plan.describe()}; batch {describe_batch_size(args.batch_size, batch_size, plan.device)}; "
          f"JPEG decoding in {args.jpeg_decode}; decode priority {args.decode_priority}; "
          f"{args.busy} busy-loop processes beside it; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; malloc {'tuned' if malloc_tuned else 'as is'}")
    if args.json:
        args.json.write_text(json.dumps({"plan": plan.describe(), "batch_size": batch_size,
                                         "requested_batch_size": args.batch_size, "model": args.model,
                                         "jpeg_decode": args.jpeg_decode, "decode_priority": args.decode_priority,
                                         "busy_processes": args.busy, "malloc_tuned": malloc_tuned, "rows": rows},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
