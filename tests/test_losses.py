"""The triplet losses compute the formula they claim, and mine the triplets they claim."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.training.losses import batch_hard_triplet_loss, euclidean_distances, triplet_loss


def test_euclidean_distances_match_torch_cdist():
    a, b = torch.randn(5, 8), torch.randn(7, 8)
    assert torch.allclose(euclidean_distances(a, b), torch.cdist(a, b), atol=1e-5)


def test_triplet_loss_is_the_hinge_formula():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    p = F.normalize(torch.tensor([[1.0, 0.1], [1.0, 0.0]]), dim=1)
    n = F.normalize(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), dim=1)
    loss, active = triplet_loss(q, p, n, margin=0.2)
    d = lambda x, y: (x - y).norm(dim=1)  # noqa: E731
    expected = torch.relu(0.2 + d(q, p) - d(q, n)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert active == 0.5  # the first triplet already satisfies the margin, the second does not


def test_triplet_loss_gradient_pulls_positive_and_pushes_negative():
    q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    p = torch.tensor([[0.0, 1.0]], requires_grad=True)
    n = torch.tensor([[0.9, 0.1]], requires_grad=True)
    loss, _ = triplet_loss(q, p, n, margin=0.5)
    loss.backward()
    # a gradient step moves p towards q and n away from q
    assert ((p - 0.1 * p.grad) - q).norm() < (p - q).norm()
    assert ((n - 0.1 * n.grad) - q).norm() > (n - q).norm()


def test_batch_hard_picks_the_hardest_pairs():
    anchors = torch.tensor([[0.0, 0.0]])
    candidates = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [5.0, 0.0]])
    labels = torch.tensor([7, 7, 8, 9])
    loss, active = batch_hard_triplet_loss(anchors, torch.tensor([7]), candidates, labels, margin=0.5)
    # hardest positive at distance 3, hardest negative at distance 2: 0.5 + 3 - 2
    assert loss.item() == pytest.approx(1.5)
    assert active == 1.0


def test_batch_hard_skips_anchors_without_a_positive_or_negative():
    anchors = torch.randn(3, 4)
    candidates = torch.randn(4, 4)
    loss, _ = batch_hard_triplet_loss(anchors, torch.tensor([1, 2, 3]), candidates,
                                      torch.tensor([1, 1, 2, 2]), margin=0.3)
    only_first_two, _ = batch_hard_triplet_loss(anchors[:2], torch.tensor([1, 2]), candidates,
                                                torch.tensor([1, 1, 2, 2]), margin=0.3)
    assert loss.item() == pytest.approx(only_first_two.item())
    empty, active = batch_hard_triplet_loss(anchors, torch.tensor([5, 5, 5]), candidates,
                                            torch.tensor([5, 5, 5, 5]), margin=0.3)
    assert empty.item() == 0.0 and active == 0.0
