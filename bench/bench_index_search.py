"""Benchmark: build an index of a real catalogue, then time `/search` against a real uvicorn process.

    python bench/bench_index_search.py [--images ../shared/data/fashion-products/images]
                                       [--model efficientnet-lite0] [--queries 200] [--limit N]

Reports encode img/s (from the build's own timings), index size on disk, and search latency
p50/p95/p99 over uploads of catalogue photos at concurrency 1, plus how many came back as their
own item first (a sanity check that the served index is the one built).
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "fashion-products" / "images"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def wait_healthy(base: str, process: subprocess.Popen, timeout: float = 300) -> None:
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"service exited with {process.returncode}")
        try:
            if httpx2.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            time.sleep(0.5)
    raise SystemExit("service did not become healthy")


def altered_copy_ranks(client, base: str, photos: list[Path]) -> list[int]:
    """Rank of the true item for shopper-like copies (crop, tilt, colour shift, blur, noise);
    101 when it is not in the top 100."""
    import io

    from PIL import Image

    from demo.synth import street_view

    rng, ranks = random.Random(1), []
    for photo in photos:
        buffer = io.BytesIO()
        street_view(Image.open(photo), rng).save(buffer, "JPEG", quality=80)
        results = client.post(f"{base}/search", params={"k": 100},
                              files={"image": ("street.jpg", buffer.getvalue(), "image/jpeg")}).json()["results"]
        ids = [r["item_id"] for r in results]
        ranks.append(ids.index(photo.stem) if photo.stem in ids else 101)
    return ranks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N photos")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--altered", type=int, default=200, help="altered-copy queries for top-k (0: none)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="keep the index here (default: a temp folder)")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import httpx2

    from indexer.build import BuildOptions, build_index
    from model.catalog import discover_images
    from indexer.manifest import read_manifest
    from model.cpu_runtime import keep_freed_memory

    keep_freed_memory()  # as `python -m indexer build` does

    if not args.images.is_dir():
        raise SystemExit(f"no image folder at {args.images}; pass --images")
    work = Path(tempfile.mkdtemp(prefix="snap2shop-bench-"))
    images = args.images
    photos = discover_images(images)
    if args.limit:
        images = work / "subset"
        images.mkdir()
        for photo in photos[: args.limit]:
            (images / photo.name).symlink_to(photo)
        photos = discover_images(images)
    out = args.out or work / "index"

    version = build_index(BuildOptions(out=out, images=images, model_spec=args.model, batch_size=args.batch_size,
                                       workers=args.workers, progress=True))
    _, manifest = read_manifest(version)
    timings = manifest.timings

    base = f"http://127.0.0.1:{args.port}"
    log = open(work / "service.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "service", "--index", str(out), "--port", str(args.port)],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(base, process)
        sample = random.Random(0).sample(photos, min(args.queries, len(photos)))
        latencies, self_first, twin_first, server_ms = [], 0, 0, {"embed_ms": [], "search_ms": []}
        # byte-identical photos of different items tie; which of the twins comes first is arbitrary
        duplicated = {item for group in manifest.duplicate_photo_groups for item in group}
        with httpx2.Client(timeout=60) as client:
            client.post(f"{base}/search", files={"image": ("w.jpg", sample[0].read_bytes())})  # warm-up
            started = time.perf_counter()
            for photo in sample:
                data = photo.read_bytes()
                t0 = time.perf_counter()
                response = client.post(f"{base}/search", params={"k": 10}, files={"image": (photo.name, data, "image/jpeg")})
                latencies.append((time.perf_counter() - t0) * 1e3)
                body = response.json()
                if body["results"][0]["item_id"] == photo.stem:
                    self_first += 1
                elif photo.stem in duplicated:
                    twin_first += 1
                for key in server_ms:
                    server_ms[key].append(body["timings_ms"][key])
            wall = time.perf_counter() - started
            altered_ranks = altered_copy_ranks(client, base, random.Random(2).sample(photos, min(args.altered, len(photos))))
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()

    rows = [
        ("catalogue", f"{manifest.counts.vectors} photos ({manifest.counts.skipped} skipped) from {args.images}"),
        ("model", f"{manifest.model.spec}, {manifest.dim} dims, batch {args.batch_size}"),
        ("encode", f"{timings['images_per_s']:.1f} img/s ({timings['wall_s']:.0f} s wall, forward {timings['forward_s']:.0f} s)"),
        ("index size", f"{folder_size(version) / 1e6:.1f} MB on disk (faiss {manifest.index_factory} + SQLite + manifest)"),
        ("search latency", f"p50 {percentile(latencies, 50):.1f} ms, p95 {percentile(latencies, 95):.1f} ms, "
                           f"p99 {percentile(latencies, 99):.1f} ms over {len(latencies)} uploads, concurrency 1"),
        ("  of which", f"embed p50 {statistics.median(server_ms['embed_ms']):.1f} ms, "
                       f"faiss+metadata p50 {statistics.median(server_ms['search_ms']):.2f} ms"),
        ("throughput", f"{len(latencies) / wall:.1f} req/s at concurrency 1"),
        ("self-match", f"{self_first}/{len(sample)} uploads came back as their own item first; "
                       f"{twin_first} more as a byte-identical twin item"),
    ]
    if altered_ranks:
        rows.append(("altered copies", ", ".join(
            f"top-{k} {sum(r < k for r in altered_ranks) / len(altered_ranks):.1%}" for k in (1, 5, 10))
            + f" over {len(altered_ranks)} cropped/tilted/recoloured catalogue photos (demo.synth.street_view)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(json.dumps({"encode_img_per_s": timings["images_per_s"], "index_bytes": folder_size(version),
                      "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
                      "p99_ms": percentile(latencies, 99), "self_first": self_first, "twin_first": twin_first, "queries": len(sample)}))
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
