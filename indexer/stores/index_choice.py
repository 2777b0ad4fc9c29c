"""`--index-factory auto`: exact search while it is fast, an IVF index with a tuned nprobe beyond.

The thresholds come from `bench/bench_search_scaling.py` on this project's 2-core machine (README,
"Performance"): exact search scans every vector, about 8-9 GB/s here, so its cost grows with
N × dim; IVF with ~4·sqrt(N) lists scans nprobe/nlist of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

AUTO = "auto"
# Exact search while one query scans at most this many float32 values (16 MB: 3,125 vectors at 1280
# dims, 31k at 128): about 1.5 ms a query here, under 5% of a one-photo forward pass (~40 ms). Past
# it, exact search is what a lone search waits for beyond the model (5 ms at 9.6k × 1280 dims), while
# IVF with nprobe 16 found 0.999 of the exact top 10 there in 0.8 ms.
EXACT_SEARCH_MAX_VALUES = 4_000_000
# Lists probed: in the bench, 4-8 already gave recall@10 >= 0.95 against exact search at 100k-1M
# items; 16 leaves a margin for catalogues less clustered than ours. With thousands of lists each
# probe scans more (1.25 MB per list at 1M × 1280 dims), so large catalogues probe 4: 0.97 at 1.5 ms.
DEFAULT_NPROBE = 16
LARGE_NPROBE = 4
# The HNSW over the centroids must look wider than nprobe, or it misses near lists (bench: with its
# default 16, recall stalled at 0.98 whatever nprobe).
QUANTIZER_EF_SEARCH = 64
# From this many lists on, the coarse step (a query against every centroid) costs more than the
# lists probed: an HNSW graph over the centroids finds the nearest ones in a fraction of the time.
HNSW_QUANTIZER_MIN_LISTS = 2048
MIN_POINTS_PER_LIST = 39  # fewer and FAISS' k-means warns that its centroids are unreliable
TRAINING_POINTS_PER_LIST = 40  # k-means on a sample: FAISS asks for 39+ per list; minutes less at 1M


@dataclass(frozen=True)
class IndexChoice:
    factory: str
    nprobe: int | None = None
    reason: str = ""


def ivf_lists(n_vectors: int) -> int:
    """About 4·sqrt(N) lists, a power of two, with enough points per list to train them."""
    lists = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n_vectors))))
    while lists > 1 and n_vectors < MIN_POINTS_PER_LIST * lists:
        lists //= 2
    return max(1, lists)


def choose_index(requested: str, n_vectors: int, dim: int) -> IndexChoice:
    if requested != AUTO:
        return IndexChoice(requested, None, "as requested")
    if n_vectors * dim <= EXACT_SEARCH_MAX_VALUES:
        return IndexChoice("Flat", None, f"exact search: {n_vectors} vectors × {dim} dims is fast enough")
    lists = ivf_lists(n_vectors)
    large = lists >= HNSW_QUANTIZER_MIN_LISTS
    nprobe = min(LARGE_NPROBE if large else DEFAULT_NPROBE, lists)
    factory = f"IVF{lists}_HNSW32,Flat" if large else f"IVF{lists},Flat"
    return IndexChoice(factory, nprobe,
                       f"{n_vectors} vectors × {dim} dims: exact search would scan {n_vectors * dim * 4 / 1e6:.0f} MB "
                       f"per query; IVF with {lists} lists probes {nprobe}")


def apply_search_defaults(index, choice: IndexChoice) -> None:
    """Store nprobe in the index itself: FAISS writes it to the file, so every reader gets it."""
    if choice.nprobe is None:
        return
    import faiss

    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = choice.nprobe
    quantizer = faiss.downcast_index(ivf.quantizer)
    if hasattr(quantizer, "hnsw"):
        quantizer.hnsw.efSearch = max(QUANTIZER_EF_SEARCH, 2 * choice.nprobe)
