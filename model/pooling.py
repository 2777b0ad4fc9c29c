"""Global pooling layers: max (the seed paper's choice), GeM and average."""
from __future__ import annotations

import torch
from torch import nn


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=(-2, -1))


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class GeM(nn.Module):
    """Generalised mean pooling (Radenović et al.): p=1 is average, p→∞ approaches max.

    p is learnable so fine-tuning can pick where between average and max the garment cue lies.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Backbone activations can be negative (EfficientNet ends in ReLU6 but others need not);
        # clamping keeps the fractional power defined.
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


def build_pooling(name: str, gem_p: float = 3.0) -> nn.Module:
    if name == "max":
        return GlobalMaxPool()
    if name == "avg":
        return GlobalAvgPool()
    if name == "gem":
        return GeM(gem_p)
    raise ValueError(f"unknown pooling {name!r}; choose max, gem or avg")
