"""Triplet losses on L2-normalised embeddings with Euclidean distance: max(0, m + d(q,p) - d(q,n)).

Small interchangeable parts (as in pytorch-metric-learning): a distance, a loss on explicit
triplets (the seed paper's three streams), and a batch-hard loss that mines the triplets inside
a P x K batch (Hermans et al., "In Defense of the Triplet Loss").
"""
from __future__ import annotations

import torch


def euclidean_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d) x (m, d) -> (n, m). The epsilon keeps the gradient of sqrt finite at zero distance."""
    squared = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)
    return squared.clamp(min=1e-12).sqrt()


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float) -> tuple[torch.Tensor, float]:
    """Mean hinge over explicit triplets; also the fraction of triplets still violating the margin."""
    d_pos = (anchor - positive).pow(2).sum(-1).clamp(min=1e-12).sqrt()
    d_neg = (anchor - negative).pow(2).sum(-1).clamp(min=1e-12).sqrt()
    hinge = torch.relu(margin + d_pos - d_neg)
    return hinge.mean(), float((hinge > 0).float().mean())


def batch_hard_triplet_loss(anchors: torch.Tensor, anchor_labels: torch.Tensor, candidates: torch.Tensor,
                            candidate_labels: torch.Tensor, margin: float) -> tuple[torch.Tensor, float]:
    """For each anchor (a consumer photo), its farthest same-item candidate (a shop photo) and its
    nearest other-item candidate form the triplet. Anchors lacking either are left out."""
    distances = euclidean_distances(anchors, candidates)
    same = anchor_labels.unsqueeze(1) == candidate_labels.unsqueeze(0)
    has_both = same.any(1) & (~same).any(1)
    if not bool(has_both.any()):
        return distances.sum() * 0.0, 0.0
    hardest_pos = distances.masked_fill(~same, float("-inf")).amax(1)
    hardest_neg = distances.masked_fill(same, float("inf")).amin(1)
    hinge = torch.relu(margin + hardest_pos - hardest_neg)[has_both]
    return hinge.mean(), float((hinge > 0).float().mean())
