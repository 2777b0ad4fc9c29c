"""The embedder of Gajic & Baldrich: backbone -> global pooling -> FC to D dims -> L2 norm.

Each of the three Siamese streams in training is this same module with shared weights. An adapted
embedder (`python -m model adapt`) replaces pooling and FC by `AdaptedHead`, whose query side first
finds the garment in the shopper's photo and crops it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import get_backbone
from .adapted_head import AdaptedHead, crop_boxes
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
        self.adapter = AdaptedHead(spec.feature_dim, config.adapter) if config.adapter else None
        self.embedding_dim = config.adapter.dim if config.adapter else (config.dim or spec.feature_dim)

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(images)).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Catalogue photos (B, 3, S, S) at `config.preprocessing` -> (B, D) unit vectors."""
        return self.embed_feature_maps(self.backbone(images))

    def embed_feature_maps(self, fmap: torch.Tensor) -> torch.Tensor:
        """The catalogue side after the backbone: (B, C, h, w) feature maps -> (B, D) unit vectors.

        Lets a cache of backbone maps (adapt's) be embedded again under a new head without a pass."""
        if self.adapter is not None:
            return self.adapter.project(self.adapter.pool(fmap), "catalog")
        embedding = self.head(self.neck(self.pool(fmap).flatten(1)))
        return F.normalize(embedding.float(), dim=1)

    @property
    def has_query_head(self) -> bool:
        return self.adapter is not None

    def encode_query(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shoppers' photos at `config.query_prep` -> ((B, D) unit vectors, or (B, S, D) for S scales
        each searched on its own; (B, 4) garment boxes or None).

        Boxes are x0, y0, x1, y1 in units of the input frame (0..1), possibly past its edges. The crop
        is taken from the input tensor; with the decoded photos at hand, `model.inference.embed_query_batch`
        crops from the photos instead, which keeps a small garment's detail."""
        if self.adapter is None:
            size = self.config.preprocessing.input_size
            if self.config.query_prep.input_size == size:
                return self.forward(images), None
            # A head-less model with a query size of its own sees the query at both sizes, and the
            # search keeps each photo's better score: the larger finds a garment that fills little
            # of a street photo, the catalogue's own still matches a shop photo uploaded as it is
            # (letterbox zeros stay zeros under the resize). Measured: README, "Adapt to your catalogue".
            small = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            return torch.stack([self.forward(images), self.forward(small)], dim=1), None
        fmap, boxes = self.locate_garments(images)
        if boxes is None:
            return self.adapter.project(self.adapter.pool(fmap), "query"), None
        size = self.config.preprocessing.input_size
        crops = torch.cat([crop_boxes(images, b, size) for b in self.adapter.query_boxes(boxes)])
        if images.is_contiguous(memory_format=torch.channels_last):
            crops = crops.contiguous(memory_format=torch.channels_last)
        return self.embed_query_views(crops, len(images), frame_maps=fmap), boxes

    @property
    def locates_garments(self) -> bool:
        """Whether the query side finds the garment and embeds its crop (adapted, `locate` on)."""
        return self.adapter is not None and self.adapter.config.locate

    def locate_garments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The query side's first pass: (the queries' feature maps, (B, 4) garment boxes in frame
        units, or None when this model does not locate)."""
        fmap = self.backbone(images)
        return fmap, (self.adapter.locate(fmap) if self.locates_garments else None)

    def embed_query_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """The query side's second pass: garment crops at the catalogue's input size -> (B, D) unit vectors."""
        return self.adapter.project(self.adapter.pool(self.backbone(crops)), "query")

    def embed_query_views(self, crops: torch.Tensor, queries: int, flip: bool = False,
                          frame_maps: torch.Tensor | None = None) -> torch.Tensor:
        """(V * B, 3, S, S) crops of B queries, view after view (the boxes of `adapter.query_boxes`)
        -> (B, D): the normalised sum of every crop's unit embedding (a crop and its mirror's mean
        with `flip`), one backbone pass for all of them; plus, weighted by the adapter's
        `frame_weight`, the whole frame's embedding from `frame_maps`, the (B, C, h, w) maps the
        garments were found on."""
        if flip:  # the mirrored photo's garment is the mirrored crop: no second locate pass
            crops = torch.cat([crops, torch.flip(crops, dims=[3])])
        embeddings = self.embed_query_crops(crops).float()
        # A mirror counts half, so the frame's weight means the same with and without flip.
        total = embeddings.view(-1, queries, embeddings.shape[-1]).sum(0) / (2 if flip else 1)
        weight = self.adapter.config.frame_weight
        if weight and frame_maps is not None:
            total = total + weight * self.adapter.project(self.adapter.pool(frame_maps), "query").float()
        return F.normalize(total, dim=-1)
