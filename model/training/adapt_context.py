"""What the query side embeds besides the garment crop, decided on held-out items: the crop widened
about its centre (AdapterConfig.context_widen) and the whole frame (AdapterConfig.frame_weight).

On the views of the training items the head was chosen on, the crop alone is scored against the
normalised sum of the crop's and the widened crop's embeddings, then the better of the two against
it plus the whole frame's embedding at its weight; each term ships if the held-out items do not
lose with it. The widened crops and the whole frames (at the query's size, as served) are the
stage's only backbone passes, of those views only, each cached like the others.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from .adapt_cache import encode_crops
from .adapt_fit import Projection, fit_projection, held_out_items, pool_part, top1
from ..adapted_head import BOX_RULE, widen_boxes
from ..config import Preprocessing
from .feature_cache import CachePart, fingerprint_hash

log = logging.getLogger("snap2shop.adapt")


class ContextSettings(Protocol):
    """What the stage reads of adapt's AdaptConfig (a Protocol: adapt imports this module)."""

    crop_margin: float
    context_widen: float
    frame_weight: float
    query_size: int
    shard_rows: int
    batch_size: int
    progress: bool
    seed: int
    dim: int


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def score_context(fit_q: np.ndarray, fit_items: np.ndarray, held_crop: np.ndarray, held_items: np.ndarray,
                  c_pooled: np.ndarray, c_items: np.ndarray, fit_catalog: np.ndarray, dim: int, head: str,
                  held_wide: np.ndarray | None = None, held_frame: np.ndarray | None = None,
                  frame_weight: float = 0.0, epochs: int = 12, seed: int = 0) -> dict:
    """Held-out top-1/top-20 of the garment crop alone ("crop"), of the normalised sum of the crop's
    and the widened crop's embeddings ("context", given `held_wide`), and of the better of those two
    plus `frame_weight` times the whole frame's embedding ("frame", given `held_frame`), all under
    one projection of the shipped kind.

    The projection is fitted on the other items' pairs only (`fit_q`, `fit_items`, the catalogue rows
    `fit_catalog` marks), as the shipped one was before its refit on all items; the held-out queries
    are searched among every catalogue item (`c_pooled`, `c_items`)."""
    projection = fit_projection(fit_q, fit_items, c_pooled[fit_catalog], c_items[fit_catalog], dim, head,
                                epochs=epochs, seed=seed)
    gallery = projection.embed(c_pooled, "catalog")
    crop = projection.embed(held_crop, "query")
    scores = {"queries": int(len(held_items)), "crop": top1(crop, held_items, gallery, c_items)}
    base = crop
    if held_wide is not None:
        both = crop + projection.embed(held_wide, "query")
        scores["context"] = top1(_unit(both), held_items, gallery, c_items)
        if scores["context"]["top1"] >= scores["crop"]["top1"]:
            base = both
    if held_frame is not None:
        with_frame = base + frame_weight * projection.embed(held_frame, "query")
        scores["frame"] = top1(_unit(with_frame), held_items, gallery, c_items)
    return scores


def chosen_terms(scores: dict, widen: float, frame_weight: float) -> tuple[float, float]:
    """(context_widen, frame_weight) to ship from score_context's scores: each term where the
    held-out items did not lose with it, else off (1.0, 0.0)."""
    crop = scores["crop"]["top1"]
    context = scores.get("context", {}).get("top1")
    ships_widen = widen if context is not None and context >= crop else 1.0
    frame = scores.get("frame", {}).get("top1")
    ships_frame = frame_weight if frame is not None and frame >= max(crop, context or 0.0) else 0.0
    return ships_widen, ships_frame


def _held_out_pass(kind: str, fingerprint: dict, boxes: Callable[[torch.Tensor], torch.Tensor], crop_size: int,
                   view_parts: list[CachePart], held_view: np.ndarray, config: ContextSettings, cache_root: Path,
                   backbone, plan, view_prep: Preprocessing, foreground, gem_p: float) -> np.ndarray:
    """The held-out views' frames cropped where `boxes` (maps -> boxes) says, at `crop_size`, through
    the backbone into `kind` cache parts -> their pooled descriptors, in view order."""
    pooled, start = [], 0
    for part in view_parts:
        rows = np.flatnonzero(held_view[start:start + part.rows])
        start += part.rows
        if not len(rows):
            continue
        held_part = CachePart(cache_root, kind, fingerprint | {"views": part.dir.name,
                                                              "source_rows": fingerprint_hash(rows.tolist())},
                              len(rows), config.shard_rows).open()
        encode_crops(held_part, part, boxes, backbone, plan, view_prep, crop_size, config.batch_size,
                     config.progress, source_rows=rows)
        pooled.append(pool_part(held_part, foreground, gem_p))
    return np.concatenate(pooled)


def held_out_context(config: ContextSettings, view_parts: list[CachePart], locate, backbone, plan,
                     view_prep: Preprocessing, prep: Preprocessing, cache_root: Path, backbone_sum: str,
                     fg_sum: str, foreground, gem_p: float,
                     projection: Projection, q_pooled: np.ndarray, v_items: np.ndarray, q_ok: np.ndarray,
                     c_pooled: np.ndarray, c_items: np.ndarray) -> tuple[dict, float, float]:
    """score_context on the held-out items' views (the widened crops and whole frames encoded by the
    shipped backbone) -> (the report, the context_widen and frame_weight to ship). With no view held
    out, nothing is measured and the terms ship as configured."""
    configured = {"widen": config.context_widen, "frame_weight": config.frame_weight}
    held = held_out_items(len(c_items), seed=config.seed)
    of_held = np.isin(v_items, c_items[held])
    # Only located view sets have frames to crop again; the projection is fitted without any view
    # of a held-out item (mask-box crops after them included).
    located = np.arange(len(v_items)) < sum(part.rows for part in view_parts)
    held_view = q_ok & of_held & located
    if not held_view.any():
        report = configured | {"not_measured": "under 20 training items: none held out",
                               "shipped": dict(configured)}
        return report, config.context_widen, config.frame_weight
    base = {"backbone": backbone_sum, "foreground": fg_sum, "box_rule": BOX_RULE, "margin": config.crop_margin,
            "prep": prep.to_dict()}
    args = (view_parts, held_view, config, cache_root, backbone, plan, view_prep, foreground, gem_p)
    wide = frame = None
    if config.context_widen != 1.0:
        wide = _held_out_pass("context", base | {"widen": config.context_widen},
                              lambda maps: widen_boxes(locate(maps), config.context_widen), prep.input_size, *args)
    if config.frame_weight:
        frame = _held_out_pass("frames", {"backbone": backbone_sum, "size": config.query_size},
                               lambda maps: torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(len(maps), 4),
                               config.query_size, *args)
    fit = q_ok & ~of_held
    scores = score_context(q_pooled[fit], v_items[fit], q_pooled[held_view], v_items[held_view], c_pooled,
                           c_items, ~held, config.dim, projection.validation["head"], held_wide=wide,
                           held_frame=frame, frame_weight=config.frame_weight,
                           epochs=max(1, projection.validation.get("epochs") or 0), seed=config.seed)
    widen, frame_weight = chosen_terms(scores, config.context_widen, config.frame_weight)
    report = scores | configured | {"shipped": {"widen": widen, "frame_weight": frame_weight}}
    log.info("query side, held out: %s: ships context %gx, frame weight %g", scores, widen, frame_weight)
    return report, widen, frame_weight
