"""Whether the query side's context crop (AdapterConfig.context_widen) ships: decided on held-out items.

The garment crop alone is scored against the normalised mean of the crop's and the widened crop's
embeddings on the views of the training items the head was chosen on; their widened crops are the
only new backbone pass (cached like the others).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from .adapt_cache import encode_crops
from .adapt_fit import Projection, fit_projection, held_out_items, pool_part, top1
from ..adapted_head import BOX_RULE, widen_boxes
from ..config import Preprocessing
from .feature_cache import CachePart, fingerprint_hash


class ContextSettings(Protocol):
    """What the stage reads of adapt's AdaptConfig (a Protocol: adapt imports this module)."""

    crop_margin: float
    context_widen: float
    shard_rows: int
    batch_size: int
    progress: bool
    seed: int
    dim: int


def score_context(fit_q: np.ndarray, fit_items: np.ndarray, held_crop: np.ndarray, held_wide: np.ndarray,
                  held_items: np.ndarray, c_pooled: np.ndarray, c_items: np.ndarray, fit_catalog: np.ndarray,
                  dim: int, head: str, epochs: int = 12, seed: int = 0) -> dict:
    """Held-out top-1/top-20 of the garment crop alone against the normalised mean of the crop's and the
    widened crop's embeddings (AdapterConfig.context_widen), under one projection of the shipped kind.

    The projection is fitted on the other items' pairs only (`fit_q`, `fit_items`, the catalogue rows
    `fit_catalog` marks), as the shipped one was before its refit on all items; the held-out queries
    are searched among every catalogue item (`c_pooled`, `c_items`)."""
    projection = fit_projection(fit_q, fit_items, c_pooled[fit_catalog], c_items[fit_catalog], dim, head,
                                epochs=epochs, seed=seed)
    gallery = projection.embed(c_pooled, "catalog")
    crop = projection.embed(held_crop, "query")
    both = crop + projection.embed(held_wide, "query")
    both /= np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    return {"queries": int(len(held_items)), "crop": top1(crop, held_items, gallery, c_items),
            "context": top1(both, held_items, gallery, c_items)}


def held_out_context(config: ContextSettings, view_parts: list[CachePart], locate, backbone, plan,
                     view_prep: Preprocessing, prep: Preprocessing, cache_root: Path, backbone_sum: str,
                     fg_sum: str, foreground, gem_p: float,
                     projection: Projection, q_pooled: np.ndarray, v_items: np.ndarray, q_ok: np.ndarray,
                     c_pooled: np.ndarray, c_items: np.ndarray) -> dict | None:
    """score_context on the held-out items' views: their widened crops are encoded by the shipped
    backbone (one more crop pass of those views only, cached); None when no view is held out."""
    held = held_out_items(len(c_items), seed=config.seed)
    if not held.any():
        return None
    held_view = q_ok & np.isin(v_items, c_items[held])
    if not held_view.any():
        return None
    wide, start = [], 0
    for part in view_parts:
        rows = np.flatnonzero(held_view[start:start + part.rows])
        start += part.rows
        if not len(rows):
            continue
        fingerprint = {"views": part.dir.name, "backbone": backbone_sum, "foreground": fg_sum, "box_rule": BOX_RULE,
                       "margin": config.crop_margin, "widen": config.context_widen, "prep": prep.to_dict(),
                       "source_rows": fingerprint_hash(rows.tolist())}
        wide_part = CachePart(cache_root, "context", fingerprint, len(rows), config.shard_rows).open()
        encode_crops(wide_part, part, lambda maps: widen_boxes(locate(maps), config.context_widen), backbone,
                     plan, view_prep, prep.input_size, config.batch_size, config.progress, source_rows=rows)
        wide.append(pool_part(wide_part, foreground, gem_p))
    fit = q_ok & ~held_view
    return score_context(q_pooled[fit], v_items[fit], q_pooled[held_view], np.concatenate(wide), v_items[held_view],
                         c_pooled, c_items, ~held, config.dim, projection.validation["head"],
                         epochs=max(1, projection.validation.get("epochs") or 0), seed=config.seed)
