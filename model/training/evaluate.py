"""`python -m model evaluate`: the DeepFashion consumer-to-shop protocol.

Every consumer photo of the split is a query against the split's shop gallery; a query hits at k
when any photo of its item is among the first k distinct items. For `catalog` data the queries are
synthesised shopper's views of the split's items, searched against the whole catalogue (all
splits, so every other item is a distractor).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checkpoint import LoadedModel
from .data import RetrievalData
from ..inference import plan_inference, prepare_model, resolve_device
from .views import View, embed_views

DEFAULT_KS = (1, 5, 10, 20, 50)
CURVE_KS = tuple(range(1, 51))
QUERY_SEED = 20_181_116  # fixed: the same synthesised queries for every model compared


@dataclass(frozen=True)
class Protocol:
    queries: list[View]
    query_items: list[str]
    gallery: list[View]
    gallery_items: list[str]
    synthesised: bool


def build_protocol(data: RetrievalData, split: str = "test", queries_per_item: int = 1) -> Protocol:
    part = data.split(split)
    consumers = part.consumer()
    if consumers:
        gallery = part.shop()
        return Protocol([View(p) for p in consumers], [p.item_id for p in consumers],
                        [View(p) for p in gallery], [p.item_id for p in gallery], synthesised=False)
    queries, items = [], []
    for index, (item, photos) in enumerate(sorted(part.shop_by_item().items())):
        for n in range(queries_per_item):
            queries.append(View(photos[n % len(photos)], synth_seed=QUERY_SEED + 1000 * index + n))
            items.append(item)
    gallery = data.shop()
    return Protocol(queries, items, [View(p) for p in gallery], [p.item_id for p in gallery], synthesised=True)


def item_ranks(query_embeddings: np.ndarray, query_items: Sequence[str], gallery_embeddings: np.ndarray,
               gallery_items: Sequence[str]) -> np.ndarray:
    """0-based rank of each query's true item among distinct gallery items (best photo per item);
    `query_embeddings` (N, D), or (N, S, D) for queries seen at S scales.
    Ties count against the query, so a model that scores everything equal gets no credit."""
    item_names, item_of_photo = np.unique(np.asarray(gallery_items), return_inverse=True)
    position = {name: i for i, name in enumerate(item_names)}
    ranks = np.empty(len(query_items), dtype=np.int64)
    for start in range(0, len(query_items), 256):
        chunk = query_embeddings[start:start + 256]
        # (N, S, D): a query at S scales scores each photo by its best scale, as the service does
        scores = chunk @ gallery_embeddings.T if chunk.ndim == 2 else (chunk @ gallery_embeddings.T).max(1)
        per_item = _max_per_item(scores, item_of_photo, len(item_names))
        for row, item in enumerate(query_items[start:start + 256]):
            true_score = per_item[row, position[item]]
            ranks[start + row] = int((per_item[row] >= true_score).sum()) - 1
    return ranks


def _max_per_item(scores: np.ndarray, item_of_photo: np.ndarray, n_items: int) -> np.ndarray:
    order = np.argsort(item_of_photo, kind="stable")
    sorted_items = item_of_photo[order]
    starts = np.flatnonzero(np.r_[True, sorted_items[1:] != sorted_items[:-1]])
    reduced = np.maximum.reduceat(scores[:, order], starts, axis=1)
    out = np.full((len(scores), n_items), -np.inf, dtype=scores.dtype)
    out[:, sorted_items[starts]] = reduced
    return out


def top_k(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    return {f"top{k}": round(float((ranks < k).mean()), 4) for k in ks}


def evaluate(data: RetrievalData, loaded: LoadedModel, split: str = "test", device: str = "auto",
             batch_size: int = 64, workers: int = 2, queries_per_item: int = 1, progress: bool = True) -> dict:
    protocol = build_protocol(data, split, queries_per_item)
    if not protocol.queries or not protocol.gallery:
        raise ValueError(f"the {split!r} split has no queries or no gallery to evaluate on")
    synthesizer = None
    if protocol.synthesised:
        from ..synthesis import ConsumerViewSynthesizer

        synthesizer = ConsumerViewSynthesizer()
    plan = plan_inference(resolve_device(device))
    model = prepare_model(loaded.model, plan)
    prep = loaded.config.preprocessing
    query_embeddings = embed_views(model, plan, protocol.queries, loaded.config.query_prep, synthesizer, batch_size,
                                   workers, progress, desc="queries", query=True)
    gallery_embeddings = embed_views(model, plan, protocol.gallery, prep, None, batch_size, workers,
                                     progress, desc="gallery")
    ranks = item_ranks(query_embeddings, protocol.query_items, gallery_embeddings, protocol.gallery_items)
    return {
        "model": loaded.spec, "model_checksum": loaded.checksum, "split": split,
        "queries": len(protocol.queries), "gallery_photos": len(protocol.gallery),
        "gallery_items": len(set(protocol.gallery_items)), "synthesised_queries": protocol.synthesised,
        **top_k(ranks), "curve": {str(k): v for k, v in zip(CURVE_KS, top_k(ranks, CURVE_KS).values())},
    }


def write_report(results: list[dict], json_path: Path, png_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2) + "\n", encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for result in results:
        ks = [int(k) for k in result["curve"]]
        ax.plot(ks, list(result["curve"].values()), label=f"{Path(result['model']).name} (top-1 {result['top1']:.3f})")
    ax.set_xlabel("k (distinct items retrieved)")
    ax.set_ylabel("top-k accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"consumer-to-shop retrieval, {results[0]['split']} split, {results[0]['queries']} queries")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
