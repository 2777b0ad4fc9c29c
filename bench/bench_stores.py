"""Both vector stores (FAISS, Milvus) through both encoding engines (local, Ray) on this machine.

    python bench/bench_stores.py [--images ../shared/data/fashion-products/images] [--limit 2000]
        [--scale 100000] [--milvus-uri PATH.db | http://host:19530] [--json out.json]

1. Builds: the same `--limit` catalogue photos through `python -m indexer build` with each engine and
   store (default index: exact search at this size): wall time, encoding rate, the store's write time,
   and whether the four builds hold the same vectors.
2. Search on those builds: shopper-like queries (noisy copies of catalogue vectors, as in
   bench_search_scaling) one at a time through each store: p50/p95 latency and recall@10 against
   exact search (numpy; a hit tied with the exact 10th best counts as found).
3. Scale: `--scale` synthetic catalogue vectors made from the real ones (bench_search_scaling's
   blend-and-noise items) written into each store with Flat, IVF (nprobe 16) and HNSW32: write time,
   p50/p95 latency, recall@10 against exact.

A `.db` URI measures Milvus Lite, embedded in this process; a server URI measures Milvus standalone.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_search_scaling import shopper_queries, synthetic_catalogue  # noqa: E402

DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "fashion-products" / "images"
QUERIES = 200
K = 10
TIE = 1e-5  # scores this close to the 10th best count as a tie (identical photos have identical vectors)


def _catalogue_folder(images: Path, limit: int, work: Path) -> Path:
    """The first `limit` photos (sorted), linked into one folder so every build reads the same set."""
    folder = work / "catalogue"
    folder.mkdir()
    for photo in sorted(images.glob("*.jpg"))[:limit]:
        os.symlink(photo, folder / photo.name)
    return folder


def run_build(folder: Path, out: Path, engine: str, store: list[str], workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "indexer", "build", "--images", str(folder), "--out", str(out),
                           "--engine", engine, "--workers", str(workers), "--quiet", *store],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"build {engine}/{store} failed:\n{done.stderr[-3000:]}")
    from indexer.manifest import read_manifest

    _, manifest = read_manifest(out)
    timings = manifest.timings
    return {"wall_s": round(wall, 1), "images_per_s": timings["images_per_s"], "store_write_s": timings["index_s"],
            "vectors": manifest.counts.vectors, "index": manifest.index_factory}


def recall_with_ties(found: np.ndarray, catalogue: np.ndarray, queries: np.ndarray, tenth: np.ndarray) -> float:
    """Share of the found top 10 scoring at least the exact 10th best: a photo tied with it is as
    right as the one an exact sort happened to put first (id-based recall counts it wrong)."""
    hits = 0
    for row, query, threshold in zip(found, queries, tenth):
        ids = row[row >= 0]
        hits += int(np.sum(catalogue[ids] @ query >= threshold - TIE))
    return hits / (K * len(queries))


def time_searches(store, queries: np.ndarray, catalogue: np.ndarray, tenth: np.ndarray) -> dict:
    found, took = [], []
    store.search(queries[:1], K)  # first call: lazy set-up (loading, caches) is not a search
    for query in queries:
        started = time.perf_counter()
        hits = store.search(query[None], K)
        took.append((time.perf_counter() - started) * 1e3)
        ids = np.full(K, -1, dtype=np.int64)
        ids[:len(hits.ids)] = hits.ids[:K]
        found.append(ids)
    return {"p50_ms": round(float(np.percentile(took, 50)), 3), "p95_ms": round(float(np.percentile(took, 95)), 3),
            "recall_at_10": round(recall_with_ties(np.array(found), catalogue, queries, tenth), 4)}


def exact_tenth(catalogue: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The exact 10th best score of each query."""
    scores = queries @ catalogue.T
    return -np.partition(-scores, K - 1, axis=1)[:, K - 1]


def bench_builds(args, work: Path) -> tuple[dict, np.ndarray]:
    from indexer.store import open_index

    folder = _catalogue_folder(args.images, args.limit, work)
    results, vectors = {}, {}
    for engine in ("local", "ray"):
        for store in ("faiss", "milvus"):
            out = work / f"{store}-{engine}"
            options = ["--milvus-uri", str(work / f"{engine}.db")] if store == "milvus" else []
            if store == "milvus" and not args.milvus_uri.endswith(".db"):
                options = ["--milvus-uri", args.milvus_uri, "--collection", f"bench_{engine}"]
            print(f"build: {engine} engine, {store} store ...", flush=True)
            results[f"{store}/{engine}"] = run_build(folder, out, engine, options, args.workers)
            print(f"  {results[f'{store}/{engine}']}", flush=True)
            opened = open_index(out)
            try:
                vectors[f"{store}/{engine}"] = opened.store.vectors(np.arange(opened.store.count()))
            finally:
                opened.close()
    reference = vectors["faiss/local"]
    differences = {name: float(np.abs(v - reference).max()) for name, v in vectors.items()}
    rng = np.random.default_rng(1)
    queries = shopper_queries(reference, QUERIES, rng)
    tenth = exact_tenth(reference, queries)
    for name in results:
        store, engine = name.split("/")
        opened = open_index(work / f"{store}-{engine}")
        try:
            results[name] |= time_searches(opened.store, queries, reference, tenth)
        finally:
            opened.close()
        results[name]["max_vector_diff_vs_faiss_local"] = differences[name]
        print(f"search {name}: {results[name]}", flush=True)
    return results, reference


def bench_scale(args, real: np.ndarray, work: Path) -> dict:
    from indexer.stores.index_choice import IndexChoice, ivf_lists
    from indexer.stores import StoreConfig, build_store

    rng = np.random.default_rng(0)
    catalogue = synthetic_catalogue(real, args.scale, rng)
    queries = shopper_queries(catalogue, QUERIES, rng)
    tenth = exact_tenth(catalogue, queries)
    categories = [""] * len(catalogue)
    lists = ivf_lists(len(catalogue))
    choices = [IndexChoice("Flat"), IndexChoice(f"IVF{lists},Flat", 16), IndexChoice("HNSW32")]
    results = {}
    for kind in ("faiss", "milvus"):
        uri = str(work / "scale.db") if args.milvus_uri.endswith(".db") else args.milvus_uri
        config = StoreConfig(kind, uri if kind == "milvus" else None, "bench_scale" if kind == "milvus" else None)
        for choice in choices:
            staging = work / f"scale-{kind}-{choice.factory.replace(',', '_')}"
            staging.mkdir()
            started = time.perf_counter()
            store = build_store(config, catalogue, categories, choice, staging, owner=work)
            store.persist(staging)
            write_s = time.perf_counter() - started
            if kind == "milvus":
                store.close()
                from indexer.stores import open_store

                store = open_store(staging, json.loads((staging / "store.json").read_text()),
                                   ids_where=None)
            name = f"{kind}/{choice.factory}"
            results[name] = {"vectors": len(catalogue), "write_s": round(write_s, 1)} | time_searches(
                store, queries, catalogue, tenth)
            print(f"scale {name}: {results[name]}", flush=True)
            if kind == "milvus":
                store.client.drop_collection(store.name)
            store.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit", type=int, default=2000, help="catalogue photos for the builds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=int, default=100_000, help="synthetic vectors for part 3 (0: skip)")
    parser.add_argument("--milvus-uri", default="bench.db", help="a .db name (Milvus Lite in the work folder) or "
                                                               "a Milvus server's URI")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.images.is_dir():
        raise SystemExit(f"no photos at {args.images}; pass --images")
    work = Path(tempfile.mkdtemp(prefix="bench-stores-"))
    try:
        builds, real = bench_builds(args, work)
        scale = bench_scale(args, real, work) if args.scale else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"limit": args.limit, "scale": args.scale, "builds": builds, "scale_results": scale,
              "cpus": os.cpu_count()}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
