"""`indexer build`: reader (catalogue) -> mapper (embedder) -> writer (vector store + SQLite + manifest)."""
from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import torch

from model import DEFAULT_MODEL_SPEC, LoadedModel, load_model
from model.catalog import CatalogEntry, image_root_for, relative_to_root
from model.inference import resolve_device

from . import __version__
from .encode import EncodeResult
from .encoding import EncodingOptions
from .ingest import read_entries, require_some_usable, skipped_photos
from .stores.index_choice import AUTO
from .layout import MANIFEST, METADATA_FILE, publish, staged_version, writer_lock
from .feature_reuse import encode_from_cached_maps, feature_cache_for
from .manifest import CatalogSource, Counts, IndexedModel, Manifest, format_version_for, write_manifest
from .metadata import ImageRow, cross_item_duplicates, write_metadata
from .stores import (StoreConfig, build_store, categories_of, check_index_request, check_reachable,
                     index_choice_for, release_folder_store)

log = logging.getLogger("snap2shop.indexer")


@dataclass(frozen=True)
class BuildOptions(EncodingOptions):
    out: Path
    images: Path | None = None
    catalog: Path | None = None
    model_spec: str = DEFAULT_MODEL_SPEC
    index_factory: str = AUTO
    store: StoreConfig = field(default_factory=StoreConfig)
    # Backbone maps already on disk: "auto" (the adapt cache an adapted checkpoint names), "off", or
    # a cache folder (see feature_reuse); photos the cache does not hold exactly are encoded.
    features: str = "auto"


def read_catalog(options: BuildOptions) -> list[CatalogEntry]:
    return read_entries(options.images, options.catalog)


def build_index(options: BuildOptions) -> Path:
    """Encode the catalogue and publish a new index version. Returns the version folder."""
    started = time.perf_counter()
    entries = read_catalog(options)
    device = resolve_device(options.device)
    log.info("encoding %d photos on %s", len(entries), device)
    loaded = load_model(options.model_spec)
    # A typo in the index or an unreachable store fails now, not after minutes of encoding.
    check_index_request(options.store, options.index_factory, loaded.model.embedding_dim)
    check_reachable(options.store)

    out = Path(options.out)
    retire = functools.partial(release_folder_store, override=options.store)
    with writer_lock(out, retire), staged_version(out, retire) as staging:
        paths = [e.path for e in entries]
        cache = feature_cache_for(loaded, options.features)
        encoded = (encode_from_cached_maps(paths, loaded, cache) if cache is not None and paths else None) \
            or options.encode(paths, loaded, device)
        skipped = skipped_photos(entries, encoded)
        require_some_usable(len(entries), len(encoded.ok_indices), skipped)
        _write_version(staging, options, entries, encoded, loaded, device, skipped, started)
        return publish(out, staging, retire)


def _write_version(staging: Path, options: BuildOptions, entries: list[CatalogEntry], encoded: EncodeResult,
                   loaded: LoadedModel, device: torch.device, skipped: list[dict], started: float) -> None:
    root = image_root_for(options.images, options.catalog)
    rows = [ImageRow(vector_id=vid, item_id=entries[i].item_id, path=relative_to_root(entries[i].path, root),
                     attributes=entries[i].attributes, sha256=digest)
            for vid, (i, digest) in enumerate(zip(encoded.ok_indices.tolist(), encoded.sha256))]
    t0 = time.perf_counter()
    choice = index_choice_for(options.store, options.index_factory, len(encoded.embeddings),
                              loaded.model.embedding_dim)
    store = build_store(options.store, encoded.embeddings, categories_of([r.attributes for r in rows]), choice,
                        staging, owner=Path(options.out))
    try:
        store_section = store.persist(staging)
    finally:
        store.close()  # a failure from here on is cleaned up with the staging folder (retire)
    index_s = time.perf_counter() - t0

    item_count = write_metadata(staging / METADATA_FILE, rows)
    duplicates = cross_item_duplicates((row.sha256, row.item_id) for row in rows)
    if duplicates:
        log.warning("%d groups of different items share byte-identical photos (e.g. %s); "
                    "search cannot tell them apart", len(duplicates), ", ".join(duplicates[0]))
    write_manifest(staging / MANIFEST, Manifest(
        format_version=format_version_for(store_section["kind"]),
        snap2shop_version=__version__,
        built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        model=IndexedModel(spec=loaded.spec, checksum=loaded.checksum, config=loaded.config.to_dict()),
        dim=loaded.model.embedding_dim,
        preprocessing=loaded.config.preprocessing,
        # What the service does to an upload: its own preprocessing, and the query-side head of an
        # adapted model (whose catalogue side made the vectors here).
        query_preprocessing=loaded.config.query_prep,
        query_head=loaded.config.adapter.to_dict() if loaded.config.adapter else None,
        metric="inner_product",
        index_factory=choice.factory,
        store=store_section,
        index_choice={"requested": options.index_factory, "nprobe": choice.nprobe, "reason": choice.reason},
        catalog=CatalogSource(image_root=str(root),
                              csv=str(Path(options.catalog).resolve()) if options.catalog else None),
        counts=Counts(photos_found=len(entries), vectors=len(rows), items=item_count,
                      skipped=len(skipped), duplicate_photo_groups=len(duplicates)),
        skipped=skipped,
        duplicate_photo_groups=duplicates[:1000],
        # the batch the forward passes ran at (auto resolves per device); None: cached maps, no pass
        encode={"batch_size": encoded.batch_size, "requested_batch_size": options.batch_size},
        timings=encoded.timings | {"index_s": round(index_s, 3),
                                   "total_s": round(time.perf_counter() - started, 3)},
        environment={"device": str(device), "torch": torch.__version__, "faiss": faiss.__version__},
    ))
