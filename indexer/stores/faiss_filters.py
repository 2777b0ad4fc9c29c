"""Restricting a FAISS search to a subset of vectors (a metadata filter such as category).

FAISS applies the selector inside the search, so a rare category still yields k hits instead of
the few that happen to sit in the unfiltered top k.
"""
from __future__ import annotations

import numpy as np


def search_params_for(index, allowed_ids: np.ndarray, fetch: int, widen: int = 1):
    """SearchParameters of the right kind for `index` (IVF and HNSW take their own subclasses).

    `widen` multiplies how much of an approximate index is explored (IVF lists probed, HNSW beam),
    so a caller that found too few filtered hits can ask again more widely. Returns the params,
    the selector (which must outlive the search) and whether a wider search could find more.
    """
    import faiss

    selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        ivf = None
    if ivf is not None:
        nprobe = min(ivf.nlist, ivf.nprobe * widen)
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe), selector, nprobe < ivf.nlist
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        # HNSW filters while it walks the graph: a wider beam keeps rare categories reachable.
        ef = max(hnsw.efSearch, 2 * fetch) * widen
        return faiss.SearchParametersHNSW(sel=selector, efSearch=ef), selector, ef < index.ntotal
    return faiss.SearchParameters(sel=selector), selector, False
