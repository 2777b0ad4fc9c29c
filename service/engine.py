"""The loaded index and model, and the search they answer. The only long-lived state of the service."""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.store import OpenedIndex, open_index
from model import LoadedModel, Preprocessing, build_transform, load_image, load_model
from model.inference import InferencePlan, embed_batch, plan_inference, prepare_model, resolve_device
from model.preprocessing import Box, crop_to_box

from .filters import search_params_for
from .placement import GPU_MAX_K, place_index

log = logging.getLogger("snap2shop.service")


class IncompatibleIndexError(RuntimeError):
    """The index and the model cannot work together; refused at start-up."""


@dataclass(frozen=True)
class SearchHit:
    item_id: str
    score: float
    image_path: str
    attributes: dict = field(default_factory=dict)


class SearchEngine:
    def __init__(self, index: OpenedIndex, model: LoadedModel, plan: InferencePlan,
                 index_device: str = "auto") -> None:
        self.index = index
        self.model = model
        self.plan = plan
        self._net = prepare_model(model.model, plan)
        self.preprocessing = model.config.preprocessing
        self._transform = build_transform(self.preprocessing)
        # Filter look-ups scan the metadata; an index version never changes, so their answers keep.
        self._vector_ids_where = functools.lru_cache(maxsize=256)(index.metadata.vector_ids_where)
        # Unfiltered searches go to the GPU copy when there is one; filtered searches and very deep
        # ones stay on the CPU index, which supports ID selectors and any k.
        self._search_index, self.index_placement = place_index(index.faiss_index, index_device)

    @classmethod
    def load(cls, index_dir: Path, model_spec: str | None = None, device: str = "auto",
             precision: str = "auto", index_device: str = "auto") -> "SearchEngine":
        opened = open_index(index_dir)
        manifest = opened.manifest
        spec = model_spec or manifest["model"]["spec"]
        torch_device = resolve_device(device)
        plan = plan_inference(torch_device, precision)
        loaded = load_model(spec)
        check_compatible(opened, loaded)
        engine = cls(opened, loaded, plan, index_device)
        log.info("serving %s (%d vectors, %d items) with %s; embedder on %s; index on %s", opened.version_dir,
                 opened.faiss_index.ntotal, manifest["counts"]["items"], loaded.spec,
                 " ".join(plan.describe().values()), engine.index_placement)
        return engine

    @classmethod
    def from_settings(cls, settings) -> "SearchEngine":
        return cls.load(settings.index, settings.model, settings.device, settings.precision, settings.index_device)

    def embed(self, image_bytes: bytes, box: Box | None = None) -> np.ndarray:
        """Decode, crop to `box` if given, preprocess and embed one upload.

        Raises ImageDecodeError for bad bytes and BoxError for a box outside the photo.
        """
        if box is None:
            img = load_image(image_bytes, target_size=self.preprocessing.input_size)
        else:
            # Full-resolution decode: box coordinates are in the photo's own (upright) pixels, and
            # a small box needs all of them.
            img = crop_to_box(load_image(image_bytes), box)
        return embed_batch(self._net, self._transform(img).unsqueeze(0), self.plan)

    def search(self, image_bytes: bytes, k: int, box: Box | None = None,
               category: str | None = None) -> tuple[list[SearchHit], dict[str, float]]:
        t0 = time.perf_counter()
        query = self.embed(image_bytes, box)
        t1 = time.perf_counter()
        hits = self.search_vector(query, k, category=category)
        t2 = time.perf_counter()
        return hits, {"embed_ms": (t1 - t0) * 1e3, "search_ms": (t2 - t1) * 1e3}

    def search_vector(self, query: np.ndarray, k: int, category: str | None = None) -> list[SearchHit]:
        """Top k distinct items: an item with several photos appears once, with its best score."""
        faiss_index = self.index.faiss_index
        allowed = None if category is None else self._vector_ids_where("category", category)
        total = faiss_index.ntotal if allowed is None else len(allowed)
        if total == 0:
            return []
        fetch, widen, can_widen = min(total, k * 4), 1, False
        while True:
            target, params = self._search_index, None
            if allowed is not None:
                target = faiss_index
                params, _selector, can_widen = search_params_for(faiss_index, allowed, fetch, widen)
            elif fetch > GPU_MAX_K:
                target = faiss_index
            scores, ids = target.search(np.ascontiguousarray(query, dtype=np.float32), fetch, params=params)
            # Ties (byte-identical photos of different items) are broken by vector id, so the
            # answer does not depend on FAISS' heap order.
            pairs = sorted(((int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0),
                           key=lambda pair: (-pair[1], pair[0]))
            rows = self.index.metadata.images_for_vectors([i for i, _ in pairs])
            best: dict[str, tuple[float, str]] = {}
            for vector_id, score in pairs:  # best first, so the first seen wins
                item_id, path = rows[vector_id]
                if item_id not in best:
                    best[item_id] = (score, path)
            if len(best) >= k or (fetch >= total and not can_widen):
                break
            fetch, widen = min(total, fetch * 4), widen * 4
        chosen = list(best.items())[:k]
        attributes = self.index.metadata.items([item_id for item_id, _ in chosen])
        return [SearchHit(item_id=item_id, score=score, image_path=path, attributes=attributes.get(item_id, {}))
                for item_id, (score, path) in chosen]

    def categories(self) -> list[tuple[str, int]]:
        return self.index.metadata.attribute_counts("category")

    def describe(self) -> dict:
        manifest = self.index.manifest
        return {
            "model": {"spec": self.model.spec, "checksum": self.model.checksum,
                      "dim": self.model.model.embedding_dim} | self.plan.describe(),
            "index": {"version": self.index.version_dir.name, "vectors": int(self.index.faiss_index.ntotal),
                      "items": manifest["counts"]["items"], "factory": manifest["index_factory"],
                      "placement": self.index_placement,
                      "built_at": manifest["built_at"]},
        }


def check_compatible(opened: OpenedIndex, loaded: LoadedModel) -> None:
    manifest = opened.manifest
    if loaded.model.embedding_dim != opened.faiss_index.d:
        raise IncompatibleIndexError(
            f"model {loaded.spec} makes {loaded.model.embedding_dim}-dim embeddings but index "
            f"{opened.version_dir} holds {opened.faiss_index.d}-dim vectors; rebuild the index with this model"
        )
    index_prep = Preprocessing.from_dict(manifest["preprocessing"])
    if not loaded.config.preprocessing.matches(index_prep):
        raise IncompatibleIndexError(
            f"model {loaded.spec} preprocesses photos as {loaded.config.preprocessing.to_dict()} but index "
            f"{opened.version_dir} was built with {index_prep.to_dict()}; rebuild the index with this model"
        )
    if loaded.checksum != manifest["model"]["checksum"]:
        raise IncompatibleIndexError(
            f"model {loaded.spec} (weights sha256 {loaded.checksum[:12]}) is not the model index "
            f"{opened.version_dir} was built with ({manifest['model']['spec']}, sha256 "
            f"{manifest['model']['checksum'][:12]}); its vectors would not be comparable"
        )
