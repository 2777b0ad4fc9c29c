"""The head `python -m model adapt` fits on a frozen backbone: foreground, garment box, pooling, whitening.

Everything here works on the backbone's feature map (B, C, h, w), so it can be fitted on cached
maps without running the backbone again, and runs unchanged inside the embedder at serving time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig

SIDES = ("query", "catalog")
_EPS = 1e-6
# Share of the foreground mass left out on each side when a box is read off a probability map:
# a stray confident cell in the street must not stretch the box to the frame's edge.
_BOX_TAIL = 0.03
# Cells count towards the box from this share of the most confident cell's probability: a small
# garment covers no cell wholly, so an absolute threshold (0.5) would find none.
_RELATIVE_THRESHOLD = 0.5
_MIN_PEAK = 0.15              # below it, no garment was found: the whole frame is used
_MIN_BOX_SIDE = 0.06          # of the frame; a smaller box is taken as "not found"
BOX_RULE = 2                  # bumped when the rule changes: cached crops made by another rule are not reused


class ForegroundHead(nn.Module):
    """Per-cell garment logit from the frozen feature map: a two-layer 1x1-convolution net."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net(fmap)


def weighted_gem(fmap: torch.Tensor, weights: torch.Tensor | None, p: float) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): GeM over the cells, each counted by its weight (B, 1, h, w)."""
    powered = fmap.float().clamp(min=_EPS).pow(p)
    if weights is None:
        return powered.mean(dim=(-2, -1)).pow(1.0 / p)
    weights = weights.float()
    total = weights.sum(dim=(-2, -1)).clamp(min=_EPS)
    return ((powered * weights).sum(dim=(-2, -1)) / total).clamp(min=_EPS).pow(1.0 / p)


def garment_boxes(prob: torch.Tensor, margin: float) -> torch.Tensor:
    """(B, 1, h, w) garment probabilities -> (B, 4) square boxes x0, y0, x1, y1 in frame units (0..1).

    The box spans the central 1 - 2 * _BOX_TAIL of the foreground mass (cells at least half as
    confident as the most confident one) on each axis,
    grows by `margin` of its longer side on every side and is made square around its centre, as a
    letterboxed shop photo frames its product. Where no garment is found the whole frame is returned.
    """
    batch = prob.shape[0]
    up = F.interpolate(prob.float(), scale_factor=4, mode="bilinear", align_corners=False)[:, 0]
    peak = up.flatten(1).amax(1)
    mass = (up - _RELATIVE_THRESHOLD * peak[:, None, None]).clamp(min=0)
    boxes = []
    for axis in (2, 1):  # x from the column sums, y from the row sums
        profile = mass.sum(dim=3 - axis) + _EPS
        cdf = profile.cumsum(1) / profile.sum(1, keepdim=True)
        n = profile.shape[1]
        low = (cdf < _BOX_TAIL).sum(1).float() / n
        high = ((cdf < 1 - _BOX_TAIL).sum(1).float() + 1) / n
        boxes.append((low, high))
    (x0, x1), (y0, y1) = boxes
    side = torch.maximum(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    out = torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)
    whole = torch.tensor([0.0, 0.0, 1.0, 1.0], device=prob.device).expand(batch, 4)
    lost = (peak < _MIN_PEAK) | (torch.maximum(x1 - x0, y1 - y0) < _MIN_BOX_SIDE)
    return torch.where(lost[:, None], whole, out)


def widen_boxes(boxes: torch.Tensor, factor: float) -> torch.Tensor:
    """(B, 4) x0, y0, x1, y1 boxes scaled `factor` times about their centres (may pass the frame)."""
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2 * factor
    return torch.cat([centre - half, centre + half], dim=1)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each image's box (frame units) to size x size. Outside the frame is zero, which is
    the letterbox padding in normalised tensor space, so a box past the edge reads as a letterbox."""
    batch = images.shape[0]
    lin = torch.linspace(0, 1, size, device=images.device, dtype=torch.float32)
    x0, y0, x1, y1 = (boxes[:, i:i + 1].float() for i in range(4))
    # grid_sample wants -1..1 coordinates at pixel centres (align_corners=False)
    gx = (x0 + (x1 - x0) * (lin[None] * (size - 1) + 0.5) / size) * 2 - 1
    gy = (y0 + (y1 - y0) * (lin[None] * (size - 1) + 0.5) / size) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(batch, size, size), gy[:, :, None].expand(batch, size, size)], dim=-1)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).to(images.dtype)


class AdaptedHead(nn.Module):
    """Foreground weights, GeM, learned whitening and one residual linear head per side."""

    def __init__(self, channels: int, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.foreground = ForegroundHead(channels, config.foreground_hidden) if config.foreground else None
        self.register_buffer("mean", torch.zeros(channels))
        self.whitening = nn.Parameter(torch.eye(config.dim, channels))
        if config.residual:
            self.residuals = nn.ModuleDict({side: nn.Linear(config.dim, config.dim) for side in SIDES})
            for layer in self.residuals.values():  # start as the plain whitening
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        else:
            self.residuals = None

    def foreground_prob(self, fmap: torch.Tensor) -> torch.Tensor | None:
        if self.foreground is None:
            return None
        return torch.sigmoid(self.foreground(fmap.float()))

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return weighted_gem(fmap, self.foreground_prob(fmap), self.config.gem_p)

    def project(self, pooled: torch.Tensor, side: str) -> torch.Tensor:
        """Pooled features (B, C) -> unit embeddings (B, dim) for the `side` of the search."""
        x = F.normalize(pooled.float(), dim=1) - self.mean
        y = x @ self.whitening.t()
        if self.residuals is not None:
            y = y + self.residuals[side](y)
        return F.normalize(y, dim=1)

    def query_boxes(self, boxes: torch.Tensor) -> list[torch.Tensor]:
        """The boxes a located query is embedded from, each (B, 4): the garment's, then its widened
        context box when `context_widen` is set."""
        widen = self.config.context_widen
        return [boxes] if widen == 1.0 else [boxes, widen_boxes(boxes, widen)]

    def locate(self, fmap: torch.Tensor) -> torch.Tensor:
        prob = self.foreground_prob(fmap)
        if prob is None:
            return torch.tensor([0.0, 0.0, 1.0, 1.0], device=fmap.device).expand(fmap.shape[0], 4)
        return garment_boxes(prob, self.config.crop_margin)
