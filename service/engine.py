"""The loaded index and model, and the search they answer. The only long-lived state of the service."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.store import OpenedIndex, open_index
from indexer.stores import StoreConfig
from model import LoadedModel, load_model
from model.inference import PhotoEncoder, plan_inference, resolve_device
from model.preprocessing import Box

log = logging.getLogger("snap2shop.service")


class IncompatibleIndexError(RuntimeError):
    """The index and the model cannot work together; refused at start-up."""


PHOTO_SAMPLE = 16  # photo files looked for at load: enough to tell a moved catalogue, cheap on any disk
IMAGE_ROOT_FIX = "--image-root FOLDER (or SNAP2SHOP_IMAGE_ROOT=FOLDER)"
MODEL_FIX = "rebuild the index with this model, or serve the index with the model it was built with"
# A hot reload keeps a configured model rather than follow the index to other weights.
CONFIGURED_MODEL_FIX = ("the service is configured with this model (--model / SNAP2SHOP_MODEL): rebuild the index "
                        "with it, or restart the service without --model to serve the index's own")


@dataclass(frozen=True)
class PhotoRoot:
    """Where the served index's catalogue photos are read from, and whether a sample was found there.

    A missing catalogue never stops the service: searches need only the vectors and metadata, so
    it keeps answering and says what is wrong (the log, /healthz, the photo routes' 404s)."""

    path: Path
    overridden: bool  # from the settings (--image-root / SNAP2SHOP_IMAGE_ROOT), not the manifest
    sampled: int
    found: int
    is_folder: bool = True

    @property
    def ok(self) -> bool:
        return self.found == self.sampled

    @property
    def gone(self) -> bool:
        """Not one sampled photo is there: the catalogue is elsewhere, not merely missing a few."""
        return self.sampled > 0 and self.found == 0

    @property
    def problem(self) -> str | None:
        if self.ok:
            return None
        where = (f"image root {self.path} (from --image-root / SNAP2SHOP_IMAGE_ROOT)" if self.overridden
                 else f"image root {self.path} (where the catalogue was when the index was built)")
        if self.gone:
            what = (f"none of {self.sampled} sampled catalogue photos are under {where}" if self.is_folder
                    else f"{where} is not a folder")
            return (f"{what}: searches still work, but item photos answer 404; if the catalogue has moved, "
                    f"start the service with {IMAGE_ROOT_FIX} naming its folder now")
        return (f"{self.sampled - self.found} of {self.sampled} sampled catalogue photos are missing under "
                f"{where}: their items' photos answer 404; `python -m indexer verify --deep` lists them all")

    def describe(self) -> dict:
        return {"image_root": str(self.path), "image_root_from": "settings" if self.overridden else "manifest",
                "sampled": self.sampled, "found": self.found, "ok": self.ok, "problem": self.problem}


def check_photos(index: OpenedIndex, root: Path | None, sample: int = PHOTO_SAMPLE) -> PhotoRoot:
    """Look for a spread-out sample of the index's photo files under `root` (None: the manifest's)."""
    count = index.metadata.count_images()
    ids = sorted({int(i) for i in np.linspace(0, count - 1, min(sample, count)).round()}) if count else []
    stored = [path for _, path in index.metadata.images_for_vectors(ids).values()]
    found = sum(index.resolve_image_path(path, root).is_file() for path in stored)
    chosen = index.image_root if root is None else root
    return PhotoRoot(chosen, root is not None, len(stored), found, chosen.is_dir())


@dataclass(frozen=True)
class SearchHit:
    item_id: str
    score: float
    image_path: str
    attributes: dict = field(default_factory=dict)


class SearchEngine:
    def __init__(self, index: OpenedIndex, embedder: PhotoEncoder, image_root: Path | None = None) -> None:
        self.index = index
        self.photos = check_photos(index, image_root)
        if self.photos.problem:
            log.warning("%s", self.photos.problem)
        self.store = index.store
        self.embedder = embedder
        self.model = embedder.model
        self.plan = embedder.plan
        self.preprocessing = embedder.preprocessing
        self.index_placement = index.store.placement

    @classmethod
    def load(cls, index_dir: Path, model_spec: str | None = None, device: str = "auto",
             precision: str = "auto", index_device: str = "auto",
             reuse: PhotoEncoder | None = None, store: StoreConfig | None = None,
             tta: str = "auto", image_root: Path | None = None) -> "SearchEngine":
        """Open the live index version with its model; `reuse` an already loaded embedder when it
        holds the weights the index was built with (a hot reload of the same model). `store` says
        where the index's Milvus store is reached when not where the indexer reached it;
        `image_root` where its catalogue photos are when not where they were at build time."""
        opened = open_index(index_dir, store, index_device)
        manifest = opened.manifest
        try:
            if reuse is not None and model_spec:
                manifest.require_model(reuse.model, index=opened.version_dir, error=IncompatibleIndexError,
                                       hint=CONFIGURED_MODEL_FIX)
            if reuse is not None and reuse.tta_setting == tta and manifest.model.matches(reuse.model):
                embedder = reuse
            else:
                plan = reuse.plan if reuse is not None else plan_inference(resolve_device(device), precision)
                embedder = PhotoEncoder(load_model(model_spec or manifest.model.spec), plan, tta)
            check_compatible(opened, embedder.model)
        except BaseException:
            opened.close()
            raise
        engine = cls(opened, embedder, image_root)
        log.info("serving %s (%d vectors, %d items) with %s; embedder on %s; index on %s", opened.version_dir,
                 opened.store.count(), manifest.counts.items, embedder.model.spec,
                 " ".join(embedder.plan.describe().values()), engine.index_placement)
        return engine

    @classmethod
    def from_settings(cls, settings, reuse: PhotoEncoder | None = None) -> "SearchEngine":
        return cls.load(settings.index, settings.model, settings.device, settings.precision, settings.index_device,
                        reuse=reuse, store=settings.store_override(), tta=settings.tta,
                        image_root=settings.image_root)

    @property
    def version(self) -> str:
        return self.index.version_dir.name

    def search(self, image_bytes: bytes, k: int, box: Box | None = None,
               category: str | None = None) -> tuple[list[SearchHit], dict[str, float]]:
        """One upload, start to end, in the calling thread (the service batches instead)."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        tensor, _, photo = self.embedder.decode_query(image_bytes, box)
        t1 = time.perf_counter()
        # the route's steps without its batcher: the same query tensor, photo crop and TTA
        query, _ = self.embedder.embed_queries(tensor.unsqueeze(0), None if photo is None else [photo])
        timings |= {"decode_ms": (t1 - t0) * 1e3, "embed_ms": (time.perf_counter() - t1) * 1e3}
        hits = self.search_vector(query, k, category=category, timings=timings)
        return hits, timings

    def search_vector(self, query: np.ndarray, k: int, category: str | None = None,
                      timings: dict[str, float] | None = None) -> list[SearchHit]:
        """Top k distinct items: an item with several photos appears once, with its best score.

        `timings` gets search_ms (the vector store) and metadata_ms (SQLite) added when given."""
        started = time.perf_counter()
        metadata_s = 0.0
        total = self.store.count(category)
        if total == 0:
            if timings is not None:
                timings |= {"search_ms": (time.perf_counter() - started) * 1e3, "metadata_ms": 0.0}
            return []
        # Several rows are one query seen at several scales: a photo scores its best scale.
        queries = np.asarray(query, dtype=np.float32).reshape(-1, np.shape(query)[-1])
        fetch, widen = min(total, k * 4), 1
        while True:
            best_score: dict[int, float] = {}
            can_widen = False
            for row in queries:
                found = self.store.search(row[None], fetch, category, widen)
                can_widen = can_widen or found.can_widen
                for i, score in zip(found.ids, found.scores):
                    if i >= 0 and float(score) > best_score.get(int(i), -np.inf):
                        best_score[int(i)] = float(score)
            # Ties (byte-identical photos of different items) are broken by vector id, so the
            # answer does not depend on FAISS' heap order.
            pairs = sorted(best_score.items(), key=lambda pair: (-pair[1], pair[0]))
            t_meta = time.perf_counter()
            rows = self.index.metadata.images_for_vectors([i for i, _ in pairs])
            metadata_s += time.perf_counter() - t_meta
            best: dict[str, tuple[float, str]] = {}
            for vector_id, score in pairs:  # best first, so the first seen wins
                item_id, path = rows[vector_id]
                if item_id not in best:
                    best[item_id] = (score, path)
            if len(best) >= k or (fetch >= total and not can_widen):
                break
            fetch, widen = min(total, fetch * 4), widen * 4
        chosen = list(best.items())[:k]
        t_meta = time.perf_counter()
        attributes = self.index.metadata.items([item_id for item_id, _ in chosen])
        metadata_s += time.perf_counter() - t_meta
        if timings is not None:
            timings["search_ms"] = (time.perf_counter() - started - metadata_s) * 1e3
            timings["metadata_ms"] = metadata_s * 1e3
        return [SearchHit(item_id=item_id, score=score, image_path=path, attributes=attributes.get(item_id, {}))
                for item_id, (score, path) in chosen]

    def image_paths(self, item_id: str) -> list[Path] | None:
        """Where an item's photos are on disk, best first; None for an item not in the index.

        Only paths recorded in the index come out, so no request can name another file."""
        item = self.index.metadata.item(item_id)
        if item is None:
            return None
        root = self.photos.path if self.photos.overridden else None
        return [self.index.resolve_image_path(stored, root) for stored in item["images"]]

    def categories(self) -> list[tuple[str, int]]:
        return self.index.metadata.attribute_counts("category")

    def describe(self) -> dict:
        manifest = self.index.manifest
        return {
            "model": {"spec": self.model.spec, "checksum": self.model.checksum,
                      "dim": self.model.model.embedding_dim} | self.plan.describe(),
            "index": {"version": self.version, "vectors": int(self.store.count()),
                      "items": manifest.counts.items, "factory": manifest.index_factory,
                      "store": self.store.kind, "placement": self.index_placement,
                      "built_at": manifest.built_at},
            "photos": self.photos.describe(),
        }


def check_compatible(opened: OpenedIndex, loaded: LoadedModel) -> None:
    """Queries embedded by `loaded` can be searched against the index's vectors: the same weights,
    embedding dim and photo preprocessing (open_index has held the store to the manifest's dim)."""
    opened.manifest.require_model(loaded, index=opened.version_dir, error=IncompatibleIndexError, hint=MODEL_FIX,
                                  embedding=True)
