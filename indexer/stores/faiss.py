"""The default vector store: a FAISS index in the version folder (`index.faiss`), loaded in-process.

Filters are resolved to vector ids from the metadata and applied inside the FAISS search (ID
selectors); unfiltered searches go to a GPU copy of the index when faiss sees a GPU.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import IndexBuildError, IndexOpenError
from ..layout import FAISS_FILE
from .base import StoreHits, VectorStore
from .faiss_filters import search_params_for
from .faiss_placement import GPU_MAX_K, place_index
from .index_choice import IndexChoice, apply_search_defaults
from .faiss_vectors import (append_vectors, enable_reconstruction, reconstruct, stores_exact_vectors,
                            without_vectors)

if TYPE_CHECKING:
    from ..manifest import Manifest

# Distinct filters whose vector ids are kept: a version never changes, so their answers keep.
FILTER_CACHE_SIZE = 256


class FaissStore(VectorStore):
    kind = "faiss"

    def __init__(self, index, ids_where: Callable[[str, str], np.ndarray] | None = None,
                 index_device: str = "cpu") -> None:
        self.index = index
        self.dim = index.d
        self.exact = stores_exact_vectors(index)
        self._ids_where = functools.lru_cache(maxsize=FILTER_CACHE_SIZE)(ids_where) if ids_where else None
        self._search_index, self.placement = place_index(index, index_device)

    @classmethod
    def build(cls, vectors: np.ndarray, choice: IndexChoice) -> "FaissStore":
        index = build_faiss_index(vectors, choice.factory)
        apply_search_defaults(index, choice)
        return cls(index)

    @classmethod
    def open(cls, version_dir: Path, ids_where: Callable[[str, str], np.ndarray] | None = None,
             index_device: str = "cpu") -> "FaissStore":
        import faiss

        path = version_dir / FAISS_FILE
        if not path.is_file():
            raise IndexOpenError(f"FAISS file {path} is missing")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexOpenError(f"FAISS file {path} is corrupt: {str(exc).strip().splitlines()[-1]}") from None
        return cls(index, ids_where, index_device)

    def count(self, category: str | None = None) -> int:
        return self.index.ntotal if category is None else len(self._allowed(category))

    def _allowed(self, category: str) -> np.ndarray:
        if self._ids_where is None:
            raise RuntimeError("this FAISS store was opened without metadata and cannot filter")
        return self._ids_where("category", category)

    def search(self, query: np.ndarray, fetch: int, category: str | None = None, widen: int = 1) -> StoreHits:
        query = np.ascontiguousarray(query, dtype=np.float32)
        if category is None:
            # Very deep searches stay on the CPU index, which answers any k.
            target = self._search_index if fetch <= GPU_MAX_K else self.index
            scores, ids = target.search(query, fetch)
            return StoreHits(scores[0], ids[0], False)
        params, _selector, can_widen = search_params_for(self.index, self._allowed(category), fetch, widen)
        scores, ids = self.index.search(query, fetch, params=params)  # ID selectors run on the CPU index
        return StoreHits(scores[0], ids[0], can_widen)

    def add(self, vectors: np.ndarray, categories: Sequence[str]) -> None:
        append_vectors(self.index, vectors)

    def stage_next(self, staging: Path, kept_ids: np.ndarray | None = None) -> "FaissStore":
        # An index opened for a change is the process's own copy of the file: adding to it leaves
        # the published version's file as it is.
        return self if kept_ids is None else FaissStore(without_vectors(self.index, kept_ids))

    def vectors(self, vector_ids: np.ndarray) -> np.ndarray:
        enable_reconstruction(self.index)
        return reconstruct(self.index, vector_ids)

    def persist(self, staging: Path) -> dict:
        write_faiss(self.index, staging / FAISS_FILE)
        return {"kind": self.kind}

    def consistency_problems(self, manifest: Manifest) -> list[str]:
        import faiss

        if manifest.metric == "inner_product" and self.index.metric_type != faiss.METRIC_INNER_PRODUCT:
            return ["metric: the manifest says inner product but the FAISS index uses another metric"]
        return []


DEFAULT_INDEX_FACTORY = "Flat"


def make_faiss_index(dim: int, factory: str = DEFAULT_INDEX_FACTORY):
    """An empty index for `dim`-dim unit vectors; inner product equals cosine similarity."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else str(exc)
        raise IndexBuildError(f"invalid FAISS index factory string {factory!r}: {first_line}") from None


def build_faiss_index(vectors: np.ndarray, factory: str = DEFAULT_INDEX_FACTORY):
    index = make_faiss_index(vectors.shape[1], factory)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    try:
        if not index.is_trained:
            index.train(_training_sample(index, vectors))
        index.add(vectors)
    except RuntimeError as exc:
        raise IndexBuildError(
            f"FAISS could not build {factory!r} from {len(vectors)} vectors: "
            f"{str(exc).strip().splitlines()[-1]} (small catalogues need fewer clusters, or 'Flat')"
        ) from None
    return index


def _training_sample(index, vectors: np.ndarray) -> np.ndarray:
    """IVF k-means on a seeded sample of the vectors: at 1M vectors, minutes faster, same recall (bench)."""
    import faiss

    from .index_choice import TRAINING_POINTS_PER_LIST

    try:
        lists = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        return vectors
    limit = TRAINING_POINTS_PER_LIST * lists
    if len(vectors) <= limit:
        return vectors
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), limit, replace=False))
    return vectors[rows]


def write_faiss(index, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))
