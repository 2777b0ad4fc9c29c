"""Ranking by distinct items, as the DeepFashion protocol counts hits."""
from __future__ import annotations

import numpy as np

from model.training.evaluate import _max_per_item, item_ranks, top_k


def test_max_per_item_takes_each_items_best_photo():
    scores = np.array([[0.1, 0.9, 0.3, 0.5]], dtype=np.float32)
    items = np.array([2, 0, 2, 1])
    assert np.allclose(_max_per_item(scores, items, 3), [[0.9, 0.5, 0.3]])


def test_ranks_count_distinct_items_not_photos():
    gallery_items = ["a", "a", "a", "b", "c"]
    gallery = np.eye(5, dtype=np.float32)
    # the query is closest to three photos of item a, then to c, then to b
    query = np.array([[0.9, 0.8, 0.7, 0.1, 0.2]], dtype=np.float32)
    assert item_ranks(query, ["a"], gallery, gallery_items).tolist() == [0]
    assert item_ranks(query, ["c"], gallery, gallery_items).tolist() == [1]  # not 3: a's photos count once
    assert item_ranks(query, ["b"], gallery, gallery_items).tolist() == [2]


def test_ties_count_against_the_query():
    gallery = np.ones((3, 2), dtype=np.float32)
    ranks = item_ranks(np.ones((1, 2), dtype=np.float32), ["x"], gallery, ["x", "y", "z"])
    assert ranks.tolist() == [2]  # a model that scores everything the same earns nothing


def test_top_k_fractions():
    ranks = np.array([0, 0, 3, 7, 60])
    assert top_k(ranks, (1, 5, 10, 50)) == {"top1": 0.4, "top5": 0.6, "top10": 0.8, "top50": 0.8}


def test_many_queries_in_chunks_match_one_by_one():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(40, 8)).astype(np.float32)
    items = [f"i{n % 13}" for n in range(40)]
    queries = rng.normal(size=(600, 8)).astype(np.float32)
    truth = [f"i{n % 13}" for n in range(600)]
    together = item_ranks(queries, truth, gallery, items)
    single = [item_ranks(queries[i:i + 1], truth[i:i + 1], gallery, items)[0] for i in range(0, 600, 37)]
    assert together[::37].tolist() == single
