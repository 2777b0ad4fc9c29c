"""The embedder of Gajic & Baldrich: backbone -> global pooling -> FC to D dims -> L2 norm.

Each of the three Siamese streams in training is this same module with shared weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import get_backbone
from .config import EmbedderConfig
from .pooling import build_pooling


class Embedder(nn.Module):
    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__()
        spec = get_backbone(config.backbone)
        self.config = config
        self.backbone = spec.build()
        self.pool = build_pooling(config.pooling, config.gem_p)
        # BNNeck (Luo et al., "strong baseline"): the triplet loss sees the raw pooled feature,
        # retrieval uses the batch-normalised one, which separates better under cosine distance.
        self.neck = nn.BatchNorm1d(spec.feature_dim) if config.bnneck else nn.Identity()
        if config.bnneck:
            self.neck.bias.requires_grad_(False)
        self.head = nn.Linear(spec.feature_dim, config.dim) if config.dim else nn.Identity()
        self.embedding_dim = config.dim or spec.feature_dim

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(images)).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.head(self.neck(self.pooled_features(images)))
        return F.normalize(embedding.float(), dim=1)
