"""Load test: many concurrent searches against a real uvicorn process, with a catalogue update and
a hot index swap in the middle.

    python bench/bench_load.py [--requests 10000] [--concurrency 32] [--initial 1000] [--added 100]
                               [--images ../shared/data/fashion-products/images] [--index DIR]

Indexes `--initial` catalogue photos (or serves `--index`), starts `python -m service`, then runs
`--requests` searches from `--concurrency` connections, uploading shopper-like altered copies of
catalogue photos. When half are done, `python -m indexer add` publishes `--added` new photos and the
service's watcher swaps the new version in. Prints failures by status (the goal is none), latency
p50/p95/p99, req/s, the versions that answered, and the server's own per-step summary (/stats).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "fashion-products" / "images"

from bench_index_search import percentile, wait_healthy  # noqa: E402
from lean_http import Connection, HTTPResponseError, multipart_body  # noqa: E402


def shopper_photos(photos: list[Path], count: int) -> list[bytes]:
    from PIL import Image

    from demo.synth import street_view

    rng = random.Random(4)
    uploads = []
    for photo in rng.sample(photos, min(count, len(photos))):
        buffer = io.BytesIO()
        street_view(Image.open(photo), rng).save(buffer, "JPEG", quality=85)
        uploads.append(buffer.getvalue())
    return uploads


CLIENTS = ("lean", "httpx")  # httpx: the httpx2 package, httpx's maintained successor


async def run_load(base: str, uploads: list[bytes], total: int, concurrency: int,
                   on_progress, client: str = "lean") -> tuple[list[float], Counter, Counter, float]:
    """`total` searches from `concurrency` keep-alive connections. `client`: "lean" (bench/lean_http.py,
    which leaves the shared cores to the server) or "httpx" (what an application would likely use)."""
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}, got {client!r}")
    latencies: list[float] = []
    statuses: Counter = Counter()
    versions: Counter = Counter()
    issued = 0
    failures_counted: tuple[type[BaseException], ...] = (
        OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, HTTPResponseError, ValueError)
    if client == "httpx":
        import httpx2

        failures_counted += (httpx2.HTTPError,)

    async def worker(post) -> None:
        nonlocal issued
        while issued < total:
            n = issued
            issued += 1
            started = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(post(uploads[n % len(uploads)]), timeout=120)
                if status == 200:
                    versions[json.loads(body)["index_version"]] += 1
            except failures_counted as exc:
                status = type(exc).__name__
            latencies.append((time.perf_counter() - started) * 1e3)
            statuses[status] += 1
            on_progress(len(latencies))

    started = time.perf_counter()
    if client == "lean":
        connections = [Connection(base) for _ in range(concurrency)]

        def lean_post(connection: Connection):
            async def post(photo: bytes) -> tuple[int, bytes]:
                content_type, body = multipart_body("image", "shopper.jpg", photo, "image/jpeg")
                return await connection.post("/search?k=10", body, content_type)
            return post

        try:
            await asyncio.gather(*(worker(lean_post(c)) for c in connections))
        finally:
            for connection in connections:
                await connection.close()
    else:
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx2.AsyncClient(timeout=120, limits=limits) as session:
            async def httpx_post(photo: bytes) -> tuple[int, bytes]:
                response = await session.post(f"{base}/search", params={"k": 10},
                                              files={"image": ("shopper.jpg", photo, "image/jpeg")})
                return response.status_code, response.content

            await asyncio.gather(*(worker(httpx_post) for _ in range(concurrency)))
    return latencies, statuses, versions, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--index", type=Path, help="serve this index instead of building one (it is added to)")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--initial", type=int, default=1000, help="photos indexed before the load")
    parser.add_argument("--added", type=int, default=100, help="photos added mid-load (0: no swap)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--distinct-uploads", type=int, default=200)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--client", choices=CLIENTS, default="lean",
                        help="HTTP client of the load (lean: bench/lean_http.py, light on the shared CPU)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from model.catalog import discover_images

    photos = discover_images(args.images)
    if len(photos) < args.initial + args.added:
        raise SystemExit(f"{args.images} has {len(photos)} photos; need --initial + --added")
    rng = random.Random(0)
    chosen = rng.sample(photos, args.initial + args.added)
    work = Path(tempfile.mkdtemp(prefix="snap2shop-load-"))
    initial_dir, added_dir = work / "initial", work / "added"
    for folder, subset in ((initial_dir, chosen[:args.initial]), (added_dir, chosen[args.initial:])):
        folder.mkdir()
        for photo in subset:
            (folder / photo.name).symlink_to(photo)
    index = args.index or work / "index"
    python = [sys.executable]
    if args.index is None:
        subprocess.run([*python, "-m", "indexer", "build", "--images", str(initial_dir), "--out", str(index),
                        "--model", args.model, "--quiet"], cwd=ROOT, check=True)
    uploads = shopper_photos(chosen[:args.initial], args.distinct_uploads)

    base = f"http://127.0.0.1:{args.port}"
    env = os.environ | {"SNAP2SHOP_LOG_LEVEL": "warning"}
    with open(work / "service.log", "w") as log:
        service = subprocess.Popen([*python, "-m", "service", "--index", str(index), "--port", str(args.port),
                                    "--reload-poll-s", "1"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    swap: dict = {}

    def add_photos() -> None:
        t0 = time.perf_counter()
        result = subprocess.run([*python, "-m", "indexer", "add", str(index), "--images", str(added_dir), "--quiet"],
                                cwd=ROOT, capture_output=True, text=True)
        swap.update(add_s=round(time.perf_counter() - t0, 1), add_rc=result.returncode,
                    add_output=(result.stdout + result.stderr).strip()[-400:])

    adder = threading.Thread(target=add_photos)

    def on_progress(done: int) -> None:
        if args.added and done == args.requests // 2 and not adder.is_alive() and "add_s" not in swap:
            swap["started_at_request"] = done
            adder.start()

    try:
        wait_healthy(base, service)
        import httpx2

        before = httpx2.get(f"{base}/readyz").json()["index_version"]
        latencies, statuses, versions, wall = asyncio.run(
            run_load(base, uploads, args.requests, args.concurrency, on_progress, args.client))
        if adder.ident is not None:  # started
            adder.join()
        ready = httpx2.get(f"{base}/readyz").json()
        server_stats = httpx2.get(f"{base}/stats").json()
    finally:
        service.terminate()
        service.wait(timeout=60)

    failures = {str(k): v for k, v in statuses.items() if k != 200}
    figures = {
        "requests": len(latencies), "concurrency": args.concurrency, "failures": failures,
        "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1), "req_per_s": round(len(latencies) / wall, 1),
        "wall_s": round(wall, 1), "versions_answering": dict(versions), "version_before": before,
        "version_after": ready["index_version"], "vectors_after": ready["vectors"], "swap": swap,
        "server_steps_p50_ms": {k: v["p50_ms"] for k, v in server_stats["steps_ms"].items()},
        "mean_batch_size": server_stats["mean_batch_size"], "model": args.model, "catalogue": args.initial,
        "cpus": os.cpu_count(), "client": args.client,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
