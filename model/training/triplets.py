"""Training examples: which consumer view, which shop photo, which negative.

Three negative strategies, one flag:
  batch-hard  P items x K views per batch; the loss mines the hardest positive and negative inside it
  adjacent    the seed report's: the shop photo of the neighbouring item folder in the same category
  hard        the paper's: one of the 25 shop photos nearest to the query that show another item,
              mined again at every epoch with the current model
In `catalog` mode there are no consumer photos: each query is a synthesised view of a shop photo.
"""
from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..config import Preprocessing
from .data import Photo, RetrievalData
from ..preprocessing import build_transform
from .views import Synthesizer, View, render_view

NEGATIVE_STRATEGIES = ("batch-hard", "adjacent", "hard")
HARD_NEGATIVE_POOL = 25


class _Views:
    """Picks and renders query and shop views for an item, from a per-sample seeded RNG."""

    def __init__(self, data: RetrievalData, prep: Preprocessing, synthesizer: Synthesizer | None, seed: int) -> None:
        self.shop = data.shop_by_item()
        self.consumer = data.consumer_by_item()
        self.transform = build_transform(prep)
        self.synthesizer = synthesizer
        self.seed = seed
        self.epoch = 0

    def rng(self, *key: int) -> random.Random:
        return random.Random(hash((self.seed, self.epoch) + key))

    def query_view(self, item: str, rng: random.Random) -> View:
        consumers = self.consumer.get(item)
        if consumers:
            return View(rng.choice(consumers))
        return View(rng.choice(self.shop[item]), synth_seed=rng.getrandbits(32))

    def render(self, view: View, flip: bool) -> torch.Tensor:
        img = render_view(view, self.synthesizer)
        if flip:  # shop photos are mirror-symmetric enough that a flip is a free extra view
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.transform(img)


def trainable_items(data: RetrievalData, need_consumer: bool) -> list[str]:
    shop, consumer = data.shop_by_item(), data.consumer_by_item()
    return sorted(i for i in shop if shop[i] and (consumer.get(i) or not need_consumer))


class ItemBatchDataset(Dataset):
    """One item per index: K query views and one shop photo. A batch of P indices is P x K."""

    def __init__(self, data: RetrievalData, prep: Preprocessing, views_per_item: int,
                 synthesizer: Synthesizer | None, seed: int = 0) -> None:
        self.views = _Views(data, prep, synthesizer, seed)
        self.items = trainable_items(data, need_consumer=synthesizer is None)
        self.k = views_per_item

    def set_epoch(self, epoch: int) -> None:
        self.views.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        rng = self.views.rng(index)
        queries = torch.stack([self.views.render(self.views.query_view(item, rng), flip=False) for _ in range(self.k)])
        shop = self.views.render(View(rng.choice(self.views.shop[item])), flip=rng.random() < 0.5)
        return queries, shop.unsqueeze(0), index


def collate_item_batches(samples):
    queries = torch.cat([s[0] for s in samples])
    shops = torch.cat([s[1] for s in samples])
    query_labels = torch.cat([torch.full((len(s[0]),), s[2]) for s in samples])
    shop_labels = torch.tensor([s[2] for s in samples])
    return queries, query_labels, shops, shop_labels


class TripletDataset(Dataset):
    """One (query, positive shop photo, negative shop photo) triplet per index."""

    def __init__(self, data: RetrievalData, prep: Preprocessing, synthesizer: Synthesizer | None, seed: int = 0) -> None:
        self.views = _Views(data, prep, synthesizer, seed)
        self.items = trainable_items(data, need_consumer=synthesizer is None)
        self.negatives: dict[str, list[Photo]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.views.epoch = epoch

    def set_negatives(self, negatives: dict[str, list[Photo]]) -> None:
        self.negatives = negatives

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        rng = self.views.rng(index)
        query = self.views.render(self.views.query_view(item, rng), flip=False)
        positive = self.views.render(View(rng.choice(self.views.shop[item])), flip=rng.random() < 0.5)
        negative = self.views.render(View(rng.choice(self.negatives[item])), flip=rng.random() < 0.5)
        return query, positive, negative


def adjacent_negatives(data: RetrievalData, items: list[str]) -> dict[str, list[Photo]]:
    """The next item in the same category (in id order, wrapping round), as the seed report does."""
    shop = data.shop_by_item()
    category = {i: shop[i][0].category for i in items}
    by_category: dict[str, list[str]] = defaultdict(list)
    for item in sorted(items):
        by_category[category[item]].append(item)
    everyone = sorted(items)
    negatives = {}
    for item in items:
        group = by_category[category[item]]
        if len(group) < 2:  # a category of one: fall back to the neighbour overall
            group = everyone
        neighbour = group[(group.index(item) + 1) % len(group)]
        negatives[item] = shop[neighbour]
    return negatives


def hard_negatives(query_embeddings: np.ndarray, items: list[str], shop_embeddings: np.ndarray,
                   shop_photos: list[Photo], pool: int = HARD_NEGATIVE_POOL) -> dict[str, list[Photo]]:
    """For each item's query embedding, the `pool` nearest shop photos that show another item."""
    scores = query_embeddings @ shop_embeddings.T
    shop_items = np.array([p.item_id for p in shop_photos])
    negatives = {}
    for row, item in enumerate(items):
        order = np.argsort(-scores[row])
        others = [int(i) for i in order[: pool + 64] if shop_items[i] != item][:pool]
        if len(others) < pool:
            others = [int(i) for i in order if shop_items[i] != item][:pool]
        negatives[item] = [shop_photos[i] for i in others]
    return negatives
