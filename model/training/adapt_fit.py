"""Fitting the adapted head on cached feature maps: no backbone pass happens here.

1. `fit_foreground` (`fit_foreground_on_parts`: sampled from cache parts): the 1x1-convolution
   foreground net, from cells whose garment share is known (the synthesiser's masks for views, the
   non-backdrop area for shop photos).
2. `pool`: foreground-weighted GeM of cached maps.
3. `fit_projection`: learned whitening (closed form), then optionally one residual linear head per
   side trained with InfoNCE; which of the two ships is decided on held-out training items.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..adapted_head import SIDES, ForegroundHead, weighted_gem
from .feature_cache import CachePart
from .whitening import Whitening, fit_whitening

log = logging.getLogger("snap2shop.adapt")


def fit_foreground(cells: np.ndarray, targets: np.ndarray, hidden: int, epochs: int = 4,
                   batch_size: int = 2048, lr: float = 3e-3, seed: int = 0) -> ForegroundHead:
    """(N, C) cell features and (N,) garment shares in 0..1 -> a trained ForegroundHead (BCE)."""
    if len(cells) == 0:
        raise ValueError("no cells with a known garment mask to fit the foreground head on")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = ForegroundHead(cells.shape[1], hidden)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    x_all, y_all = torch.from_numpy(cells), torch.from_numpy(targets.astype(np.float32))
    steps = epochs * math.ceil(len(cells) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(cells), generator=gen)
        for start in range(0, len(cells), batch_size):
            idx = order[start:start + batch_size]
            logits = head(x_all[idx].float()[:, :, None, None])[:, 0, 0, 0]
            loss = F.binary_cross_entropy_with_logits(logits, y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    return head


def sample_cells(maps: np.ndarray, grids: np.ndarray, limit: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` random (cell feature, garment share) pairs from (N, C, h, w) maps and (N, h, w) grids."""
    n, c, h, w = maps.shape
    picks = rng.choice(n * h * w, size=min(limit, n * h * w), replace=False)
    rows, cells = np.divmod(picks, h * w)
    ys, xs = np.divmod(cells, w)
    return maps[rows, :, ys, xs].astype(np.float16), grids[rows, ys, xs].astype(np.float32)


def fit_foreground_on_parts(cat_part: CachePart, view_parts: list[CachePart], max_cells: int,
                            seed: int = 0) -> ForegroundHead:
    """fit_foreground on up to `max_cells` cells sampled from cached maps with known garment masks."""
    rng = np.random.default_rng(seed)
    cells, targets = [], []
    # Views carry most of the signal (street vs garment); shop photos teach white backdrop vs product.
    budgets = [(part, 0.7 / len(view_parts)) for part in view_parts] + [(cat_part, 0.3)]
    for part, share in budgets:
        per_shard = max(1, int(max_cells * share) // max(1, part.shards))
        for shard in range(part.shards):
            span = part.shard_rows(shard)
            got = part.read(["maps", "mask_grid", "has_mask", "ok"], np.arange(span.start, span.stop))
            usable = got["ok"] & got["has_mask"]
            if not usable.any():
                continue
            x, y = sample_cells(got["maps"][usable], got["mask_grid"][usable], per_shard, rng)
            cells.append(x)
            targets.append(y)
    if not cells:
        raise ValueError("no photo with a known garment mask: cannot fit the foreground head")
    return fit_foreground(np.concatenate(cells), np.concatenate(targets), hidden=64, seed=seed)


def pool(maps: np.ndarray, foreground: ForegroundHead | None, p: float, batch_size: int = 256) -> np.ndarray:
    """(N, C, h, w) cached maps -> (N, C) foreground-weighted GeM descriptors."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(maps), batch_size):
            fmap = torch.from_numpy(maps[start:start + batch_size]).float()
            weights = torch.sigmoid(foreground(fmap)) if foreground is not None else None
            out.append(weighted_gem(fmap, weights, p).numpy())
    return np.concatenate(out) if out else np.zeros((0, maps.shape[1]), np.float32)


def pool_part(part: CachePart, foreground: ForegroundHead | None, p: float) -> np.ndarray:
    """A cache part's maps -> (rows, C) foreground-weighted GeM descriptors, a shard at a time."""
    chunks = []
    for shard in range(part.shards):
        span = part.shard_rows(shard)
        maps = part.read(["maps"], np.arange(span.start, span.stop))["maps"]
        chunks.append(pool(maps, foreground, p))
    return np.concatenate(chunks)


@dataclass
class Projection:
    whitening: Whitening
    residuals: dict[str, tuple[np.ndarray, np.ndarray]] | None  # side -> (weight, bias)
    validation: dict

    def embed(self, pooled: np.ndarray, side: str) -> np.ndarray:
        y = self.whitening.apply(pooled)
        if self.residuals is not None:
            weight, bias = self.residuals[side]
            y = y + y @ weight.T + bias
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def top1(queries: np.ndarray, query_items: np.ndarray, gallery: np.ndarray, gallery_items: np.ndarray,
         ks: tuple[int, ...] = (1, 20)) -> dict[str, float]:
    """Top-k item accuracy of queries against a gallery with one row per item."""
    position = {item: i for i, item in enumerate(gallery_items)}
    truth = np.array([position[i] for i in query_items])
    hits = {k: 0 for k in ks}
    for start in range(0, len(queries), 512):
        scores = queries[start:start + 512] @ gallery.T
        true = scores[np.arange(len(scores)), truth[start:start + 512]]
        rank = (scores > true[:, None]).sum(1)
        for k in ks:
            hits[k] += int((rank < k).sum())
    return {f"top{k}": round(hits[k] / max(1, len(queries)), 4) for k in ks}


def _train_residuals(whitening: Whitening, q_pooled: np.ndarray, q_index: np.ndarray, c_pooled: np.ndarray,
                     epochs: int, val: tuple | None, seed: int, temperature: float = 0.05,
                     batch_size: int = 1024, lr: float = 1e-3, weight_decay: float = 1e-2):
    """InfoNCE of each query against every catalogue row: (residual state, best epoch, val curve)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dim = whitening.projection.shape[0]
    layers = torch.nn.ModuleDict({side: torch.nn.Linear(dim, dim) for side in SIDES})
    for layer in layers.values():
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.AdamW(layers.parameters(), lr=lr, weight_decay=weight_decay)
    q_all = torch.from_numpy(whitening.apply(q_pooled))
    c_all = torch.from_numpy(whitening.apply(c_pooled))
    target = torch.from_numpy(q_index)

    def side(y: torch.Tensor, name: str) -> torch.Tensor:
        return F.normalize(y + layers[name](y), dim=1)

    def state() -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {side: (layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy())
                for side, layer in layers.items()}

    best, best_epoch, best_state, curve = -1.0, 0, state(), []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(q_all), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            logits = side(q_all[idx], "query") @ side(c_all, "catalog").t() / temperature
            loss = F.cross_entropy(logits, target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if val is not None:
            projection = Projection(whitening, state(), {})
            score = top1(projection.embed(val[0], "query"), val[1], projection.embed(val[2], "catalog"), val[3])["top1"]
            curve.append(score)
            if score > best:
                best, best_epoch, best_state = score, epoch, state()
    if val is None:
        return state(), epochs, curve
    return best_state, best_epoch, curve


VAL_SHARE = 0.1  # of the training items, held out to choose the head (and the tuned backbone) on


def held_out_items(count: int, share: float = VAL_SHARE, seed: int = 0) -> np.ndarray:
    """The catalogue items (a mask over `count`) whose views choose the head: none of under 20 items."""
    if count < 20:
        return np.zeros(count, bool)
    return np.random.default_rng(seed).random(count) < share


def fit_projection(q_pooled: np.ndarray, q_items: np.ndarray, c_pooled: np.ndarray, c_items: np.ndarray,
                   dim: int, head: str = "auto", shrinkage: float = 0.1, epochs: int = 12,
                   val_share: float = VAL_SHARE, seed: int = 0) -> Projection:
    """Whitening (and residual heads) from query descriptors and one catalogue descriptor per item.

    head: "whiten", "residual" or "auto" (both fitted on 1 - val_share of the items, the better on
    the held-out rest ships, refitted on all items)."""
    if head not in ("auto", "whiten", "residual"):
        raise ValueError(f"head must be auto, whiten or residual, got {head!r}")
    position = {item: i for i, item in enumerate(c_items)}
    keep = np.array([item in position for item in q_items], bool)
    q_pooled, q_items = q_pooled[keep], q_items[keep]
    q_index = np.array([position[i] for i in q_items], np.int64)
    dim = min(dim, q_pooled.shape[1], max(2, len(q_pooled) - 1))
    held = held_out_items(len(c_items), val_share, seed)
    q_held = held[q_index]
    report: dict = {"pairs": int(len(q_pooled)), "items": int(len(c_items)), "dim": int(dim)}
    chosen, epochs_used = ("residual" if head == "residual" else "whiten"), epochs
    if head == "auto" and held.any():
        fit_w = fit_whitening(q_pooled[~q_held], c_pooled[q_index[~q_held]], dim, shrinkage, c_pooled[~held])
        val = (q_pooled[q_held], q_items[q_held], c_pooled, c_items)
        plain = Projection(fit_w, None, {})
        report["val_whiten"] = top1(plain.embed(val[0], "query"), val[1], plain.embed(val[2], "catalog"), val[3])
        fit_index = _reindex(q_index[~q_held], ~held)
        _, best_epoch, curve = _train_residuals(fit_w, q_pooled[~q_held], fit_index, c_pooled[~held], epochs,
                                                val, seed)
        report |= {"val_residual_curve": curve, "val_residual_best_epoch": best_epoch}
        best = max(curve) if curve else -1
        report["val_residual"] = {"top1": best}
        if best > report["val_whiten"]["top1"]:
            chosen, epochs_used = "residual", best_epoch
    whitening = fit_whitening(q_pooled, c_pooled[q_index], dim, shrinkage, c_pooled)
    residuals = None
    if chosen == "residual":
        residuals, _, _ = _train_residuals(whitening, q_pooled, q_index, c_pooled, epochs_used, None, seed)
    report |= {"head": chosen, "epochs": epochs_used if chosen == "residual" else 0}
    log.info("projection: %s", report)
    return Projection(whitening, residuals, report)


def _reindex(q_index: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Catalogue row numbers after dropping the rows where `kept` is False."""
    new = np.cumsum(kept) - 1
    return new[q_index].astype(np.int64)
