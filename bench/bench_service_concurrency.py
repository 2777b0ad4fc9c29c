"""Service latency and throughput at several concurrencies, against a real uvicorn process.

    python bench/bench_service_concurrency.py --index INDEX_DIR [--concurrency 1,8,32]
        [--requests-per-client 25] [--batch-max-size 16] [--images ../shared/data/fashion-products/images]
        [--client lean|httpx2]

Uploads are shopper-like altered copies of catalogue photos. For each concurrency: p50/p95/p99
latency, req/s and the mean forward-pass batch the micro-batcher formed (from /stats). The floor is
the model's own forward time for one image, measured in this process before the server starts and after it stops:
the c=1 p50 divided by it says what the HTTP, decoding and search around the model cost. The client
runs on the same cores as the server; the default one (bench/lean_http.py) keeps its own cost small.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "fashion-products" / "images"

from bench_index_search import percentile, wait_healthy  # noqa: E402
from bench_load import CLIENTS, run_load, shopper_photos  # noqa: E402


def single_image_forward_ms(model_spec: str, repeats: int = 50) -> float:
    import torch

    from model import load_model
    from model.inference import embed_batch, plan_inference, prepare_model, resolve_device

    loaded = load_model(model_spec)
    plan = plan_inference(resolve_device("auto"))
    net = prepare_model(loaded.model, plan)
    size = loaded.config.preprocessing.input_size
    one = torch.randn(1, 3, size, size)
    for _ in range(5):
        embed_batch(net, one, plan)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        embed_batch(net, one, plan)
        times.append((time.perf_counter() - t0) * 1e3)
    return percentile(times, 50)


def forward_passes(base: str) -> tuple[float, float]:
    """(photos embedded, forward passes) so far, from the batch-size histogram of /metrics."""
    import httpx2

    values = {}
    for line in httpx2.get(f"{base}/metrics").text.splitlines():
        if line.startswith(("snap2shop_embed_batch_size_sum", "snap2shop_embed_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("snap2shop_embed_batch_size_sum", 0.0), values.get("snap2shop_embed_batch_size_count", 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="photos the uploads are made from")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=25)
    parser.add_argument("--min-requests", type=int, default=200)
    parser.add_argument("--batch-max-size", type=int, default=16)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--client", choices=CLIENTS, default="lean",
                        help="HTTP client of the load (lean: bench/lean_http.py, light on the shared CPU)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import httpx2

    from model.catalog import discover_images
    from indexer.manifest import read_manifest

    _, manifest = read_manifest(args.index)
    # This machine's speed drifts by several percent over minutes: the floor is measured before the
    # server starts and again after it stops, and averaged.
    forward_before_ms = single_image_forward_ms(manifest.model.spec)
    uploads = shopper_photos(discover_images(args.images), 200)
    log_path = Path(tempfile.mkstemp(prefix="snap2shop-service-", suffix=".log")[1])
    env = os.environ | {"SNAP2SHOP_LOG_LEVEL": "warning"}
    with open(log_path, "w") as log:
        service = subprocess.Popen([sys.executable, "-m", "service", "--index", str(args.index), "--port", str(args.port),
                                    "--batch-max-size", str(args.batch_max_size), "--reload-poll-s", "0"],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{args.port}"
    rows = []
    try:
        wait_healthy(base, service)
        asyncio.run(run_load(base, uploads, 20, 4, lambda done: None, args.client))  # warm-up
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            photos_before, passes_before = forward_passes(base)
            total = max(args.min_requests, concurrency * args.requests_per_client)
            latencies, statuses, _, wall = asyncio.run(run_load(base, uploads, total, concurrency, lambda done: None,
                                                                args.client))
            stats = httpx2.get(f"{base}/stats").json()
            photos_after, passes_after = forward_passes(base)
            rows.append({"concurrency": concurrency, "requests": total, "failures": sum(v for k, v in statuses.items() if k != 200),
                         "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
                         "p99_ms": round(percentile(latencies, 99), 1), "req_per_s": round(total / wall, 1),
                         "mean_batch": round((photos_after - photos_before) / max(1, passes_after - passes_before), 2),
                         "server_p50_ms": {k: v["p50_ms"] for k, v in stats["steps_ms"].items()}})
    finally:
        service.terminate()
        service.wait(timeout=60)
    forward_after_ms = single_image_forward_ms(manifest.model.spec)
    forward_ms = (forward_before_ms + forward_after_ms) / 2
    print(f"model forward, one image: {forward_ms:.1f} ms (before {forward_before_ms:.1f}, after {forward_after_ms:.1f}; "
          f"{manifest.model.spec}, {os.cpu_count()} CPUs; client {args.client})")
    print(f"{'c':>3} {'requests':>8} {'fail':>4} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>7}  batch")
    for row in rows:
        print(f"{row['concurrency']:>3} {row['requests']:>8} {row['failures']:>4} {row['p50_ms']:>8} {row['p95_ms']:>8} "
              f"{row['p99_ms']:>8} {row['req_per_s']:>7}  {row['mean_batch']}")
    ratio = rows[0]["p50_ms"] / forward_ms if rows and rows[0]["concurrency"] == 1 else None
    if ratio:
        print(f"c=1 p50 / single-image forward = {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"forward_ms": round(forward_ms, 2), "forward_before_ms": round(forward_before_ms, 2),
                                         "forward_after_ms": round(forward_after_ms, 2), "c1_ratio": ratio and round(ratio, 3), "client": args.client,
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
