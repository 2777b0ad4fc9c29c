"""Where the FAISS index is searched: on the GPUs when this faiss build has GPU support and sees a
GPU, on the CPU otherwise. The choice and its reason are logged and shown by /healthz."""
from __future__ import annotations

import logging

log = logging.getLogger("snap2shop.service")  # placement is decided when the service opens an index

INDEX_DEVICES = ("auto", "cpu", "gpu")
# GPU indexes answer at most this many neighbours per query (faiss' GPU k-selection limit).
GPU_MAX_K = 2048


def gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def place_index(cpu_index, mode: str = "auto") -> tuple[object, str]:
    """Returns the index to search and a description such as 'gpu (1 GPU)' or 'cpu (...)'."""
    import faiss

    if mode not in INDEX_DEVICES:
        raise ValueError(f"index device must be one of {INDEX_DEVICES}, got {mode!r}")
    if mode == "cpu":
        return cpu_index, "cpu (as configured)"
    gpus = gpu_count()
    if gpus == 0:
        reason = "no GPU visible to faiss" if hasattr(faiss, "StandardGpuResources") else "faiss-cpu build"
        if mode == "gpu":
            raise RuntimeError(f"the index was asked to run on the GPU, but: {reason}")
        return cpu_index, f"cpu ({reason})"
    try:
        gpu_index = faiss.index_cpu_to_all_gpus(cpu_index)
    except RuntimeError as exc:  # e.g. HNSW has no GPU implementation
        reason = str(exc).strip().splitlines()[-1]
        if mode == "gpu":
            raise RuntimeError(f"this index type cannot run on the GPU: {reason}") from None
        log.warning("keeping the index on the CPU: %s", reason)
        return cpu_index, f"cpu ({reason})"
    return gpu_index, f"gpu ({gpus} GPU{'s' if gpus > 1 else ''})"
