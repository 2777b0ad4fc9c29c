"""FAISS operations for changing a published index: append vectors, or rebuild it without some.

Vector id = FAISS position = `images.vector_id`, so ids must stay contiguous 0..n-1. Appending keeps
that by construction; removing keeps it by rebuilding from the kept vectors in their old order.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import IndexUpdateError

_RECONSTRUCT_CHUNK = 65536  # vectors per reconstruct call, to bound memory on large catalogues


def stores_exact_vectors(index) -> bool:
    """Whether reconstructing returns the vectors exactly as added (no quantisation)."""
    import faiss

    return isinstance(index, (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexHNSWFlat))


def _ivf_of(index):
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def enable_reconstruction(index) -> None:
    """IVF indexes can only give vectors back through a direct map (id -> list, offset), built here.

    Raises IndexUpdateError for index types that cannot give their vectors back at all.
    """
    import faiss

    ivf = _ivf_of(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    if index.ntotal:
        try:
            index.reconstruct(0)
        except RuntimeError as exc:
            raise IndexUpdateError(
                f"FAISS index type {type(index).__name__} cannot give its vectors back "
                f"({str(exc).strip().splitlines()[-1]}); rebuild the index instead"
            ) from None


def reconstruct(index, vector_ids: np.ndarray) -> np.ndarray:
    """The stored vectors at `vector_ids` (call enable_reconstruction first), as float32 rows."""
    return index.reconstruct_batch(np.ascontiguousarray(vector_ids, dtype=np.int64))


def in_chunks(vector_ids: np.ndarray) -> Iterator[np.ndarray]:
    """Consecutive slices of `vector_ids`, to hold only a chunk of a large catalogue's vectors at once."""
    for start in range(0, len(vector_ids), _RECONSTRUCT_CHUNK):
        yield vector_ids[start:start + _RECONSTRUCT_CHUNK]


def append_vectors(index, vectors: np.ndarray) -> None:
    """New vectors take ids ntotal.. in order; a trained IVF keeps its clusters."""
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))


def without_vectors(index, kept_ids: np.ndarray):
    """A copy of `index` holding only `kept_ids`, renumbered 0..len-1 in their old order.

    The copy keeps the trained parts (IVF centroids, PQ codebooks) and gets the kept vectors re-added:
    FAISS's remove_ids would leave gaps in IVF ids and is not supported by HNSW at all.
    """
    import faiss

    enable_reconstruction(index)
    rebuilt = faiss.clone_index(index)
    rebuilt.reset()
    for chunk in in_chunks(np.asarray(kept_ids, dtype=np.int64)):
        append_vectors(rebuilt, reconstruct(index, chunk))
    ivf = _ivf_of(rebuilt)
    if ivf is not None:
        # The direct map was only needed to read vectors back; the served index does without it.
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)
    return rebuilt
