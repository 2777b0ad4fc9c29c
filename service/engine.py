"""The loaded index and model, and the search they answer. The only long-lived state of the service."""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from indexer.encode import resolve_device
from indexer.store import OpenedIndex, open_index
from model import LoadedModel, Preprocessing, build_transform, load_image, load_model
from model.preprocessing import Box, crop_to_box

from .filters import search_params_for

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
    def __init__(self, index: OpenedIndex, model: LoadedModel, device: torch.device) -> None:
        self.index = index
        self.model = model
        self.device = device
        self.preprocessing = model.config.preprocessing
        self._transform = build_transform(self.preprocessing)
        # Filter look-ups scan the metadata; an index version never changes, so their answers keep.
        self._vector_ids_where = functools.lru_cache(maxsize=256)(index.metadata.vector_ids_where)

    @classmethod
    def load(cls, index_dir: Path, model_spec: str | None = None, device: str = "auto") -> "SearchEngine":
        opened = open_index(index_dir)
        manifest = opened.manifest
        spec = model_spec or manifest["model"]["spec"]
        torch_device = resolve_device(device)
        loaded = load_model(spec, device=torch_device)
        check_compatible(opened, loaded)
        log.info("serving %s (%d vectors, %d items) with %s on %s", opened.version_dir,
                 opened.faiss_index.ntotal, manifest["counts"]["items"], loaded.spec, torch_device)
        return cls(opened, loaded, torch_device)

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
        tensor = self._transform(img)
        with torch.inference_mode():
            embedding = self.model.model(tensor.unsqueeze(0).to(self.device))
        return embedding.float().cpu().numpy()

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
            params = None
            if allowed is not None:
                params, _selector, can_widen = search_params_for(faiss_index, allowed, fetch, widen)
            scores, ids = faiss_index.search(np.ascontiguousarray(query, dtype=np.float32), fetch, params=params)
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
            "model": {"spec": self.model.spec, "checksum": self.model.checksum, "device": str(self.device),
                      "dim": self.model.model.embedding_dim},
            "index": {"version": self.index.version_dir.name, "vectors": int(self.index.faiss_index.ntotal),
                      "items": manifest["counts"]["items"], "factory": manifest["index_factory"],
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
