"""`indexer add`: encode only the new photos and publish them as a new version of an existing index.

A photo is identified by its bytes: one whose sha256 the index already holds (under any item) is
not encoded or added again, so re-running an add, or adding a folder that overlaps the catalogue,
only adds what is new.
"""
from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model import LoadedModel, load_model
from model.catalog import CatalogEntry, relative_to_root
from model.inference import resolve_device

from .change import change_index
from .encoding import EncodingOptions
from .history import MAX_LISTED, revised_manifest
from .ingest import read_entries, require_some_usable, skipped_photos
from .metadata_edit import (append_images, count_rows, duplicate_groups, photos_by_hash, photos_by_path,
                            stored_categories)
from .errors import IndexUpdateError
from .metadata import ImageRow
from .store import OpenedIndex
from .stores import StoreConfig

log = logging.getLogger("snap2shop.indexer")


@dataclass(frozen=True)
class AddOptions(EncodingOptions):
    index: Path
    images: Path | None = None
    catalog: Path | None = None
    model_spec: str | None = None  # default: the model the index was built with
    store: StoreConfig | None = None  # where the index's Milvus store is reached, if not where it was built


@dataclass
class AddResult:
    version: Path | None  # None when nothing was new: no version was published
    photos_found: int
    added_vectors: int = 0
    added_items: int = 0
    vectors: int = 0  # totals of the live version afterwards
    items: int = 0
    already_indexed: list[dict] = field(default_factory=list)  # {"path", "item_id", "reason"}
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}: unreadable, corrupt, conflicting


@dataclass
class _Triage:
    new: list[CatalogEntry] = field(default_factory=list)
    stored_paths: list[str] = field(default_factory=list)  # of `new`, as the metadata stores them
    already_indexed: list[dict] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    conflicting: list[dict] = field(default_factory=list)  # a different photo is indexed at the same path
    undecodable: list[dict] = field(default_factory=list)  # filled in by encoding


def add_photos(options: AddOptions) -> AddResult:
    """Add the catalogue's new photos to the index at `options.index`; the previous version stays
    live until the new one is complete."""
    started = time.perf_counter()
    entries = read_entries(options.images, options.catalog)
    with change_index(options.index, options.store) as change:
        live = change.live
        triage = _triage(change.metadata, entries, live.image_root)
        result = AddResult(version=None, photos_found=len(entries), vectors=live.store.count(),
                           items=live.metadata.count_items(), already_indexed=triage.already_indexed)
        rows, embeddings = _encode_new(triage, options, live) if triage.new else ([], None)
        result.skipped = triage.unreadable + triage.conflicting + triage.undecodable
        # A re-run may retry a corrupt photo alone: that is nothing new, not a wrong folder.
        require_some_usable(len(entries), len(triage.already_indexed) + len(triage.conflicting) + len(rows),
                            result.skipped)
        if not rows:
            return result
        result.added_items = append_images(change.metadata, rows)
        staged = change.stage_store()
        staged.add(embeddings, stored_categories(change.metadata, [row.vector_id for row in rows]))
        result.added_vectors = len(rows)
        result.vectors, result.items = count_rows(change.metadata)
        if result.vectors != staged.count():
            raise IndexUpdateError(f"internal error: {result.vectors} metadata rows but {staged.count()} "
                                   f"vectors after adding; nothing was published")
        manifest = revised_manifest(
            live.manifest, operation="add", vectors=result.vectors, items=result.items,
            duplicate_groups=duplicate_groups(change.metadata),
            details={"source": {"images": _absolute(options.images), "catalog": _absolute(options.catalog)},
                     "photos_found": len(entries), "added_vectors": result.added_vectors,
                     "added_items": result.added_items, "already_indexed": len(result.already_indexed),
                     "skipped": len(result.skipped), "skipped_photos": result.skipped[:MAX_LISTED],
                     "timings": {"total_s": round(time.perf_counter() - started, 3)}})
        result.version = change.publish(staged, manifest)
    return result


def _encode_new(triage: _Triage, options: AddOptions, live: OpenedIndex) -> tuple[list[ImageRow], np.ndarray]:
    """Embeddings of the new photos that decode, and their metadata rows, numbered after the live ones."""
    loaded = _load_matching_model(options.model_spec, live)
    device = resolve_device(options.device)
    log.info("encoding %d new photos on %s (%d already indexed)", len(triage.new), device,
             len(triage.already_indexed))
    encoded = options.encode([e.path for e in triage.new], loaded, device)
    triage.undecodable = skipped_photos(triage.new, encoded)
    first_id = live.store.count()
    rows = [ImageRow(vector_id=first_id + k, item_id=triage.new[i].item_id, path=triage.stored_paths[i],
                     attributes=triage.new[i].attributes, sha256=digest)
            for k, (i, digest) in enumerate(zip(encoded.ok_indices.tolist(), encoded.sha256))]
    return rows, encoded.embeddings


def _triage(conn: sqlite3.Connection, entries: list[CatalogEntry], image_root: Path) -> _Triage:
    """Split the catalogue into photos to encode and photos already indexed, hashing before encoding."""
    triage = _Triage()
    digests: list[str | None] = []
    for entry in entries:
        try:
            with open(entry.path, "rb") as handle:
                digests.append(hashlib.file_digest(handle, "sha256").hexdigest())
        except OSError as exc:
            digests.append(None)
            triage.unreadable.append({"path": str(entry.path), "reason": f"cannot read file: {exc.strerror or exc}"})
    stored = [relative_to_root(entry.path, image_root) for entry in entries]
    indexed = photos_by_hash(conn, (d for d in digests if d))
    at_path = photos_by_path(conn, stored)
    first_in_batch: dict[str, CatalogEntry] = {}
    for entry, digest, path in zip(entries, digests, stored):
        if digest is None:
            continue
        if digest in indexed:
            item_id, indexed_path = indexed[digest]
            triage.already_indexed.append({"path": str(entry.path), "item_id": item_id,
                                           "reason": f"already indexed as item {item_id} ({indexed_path})"})
        elif digest in first_in_batch:
            earlier = first_in_batch[digest]
            triage.already_indexed.append({"path": str(entry.path), "item_id": earlier.item_id,
                                           "reason": f"same bytes as {earlier.path} (item {earlier.item_id}), "
                                                     f"added once"})
        elif path in at_path:
            # Two different photos under one stored path could not both be found again on disk.
            item_id = at_path[path][0]
            triage.conflicting.append({"path": str(entry.path),
                                       "reason": f"a different photo is indexed at this path as item {item_id}; "
                                                 f"remove item {item_id} first to replace it"})
        else:
            first_in_batch[digest] = entry
            triage.new.append(entry)
            triage.stored_paths.append(path)
    return triage


def _load_matching_model(model_spec: str | None, live: OpenedIndex) -> LoadedModel:
    """The index's own model: vectors from any other weights would not be comparable with its vectors."""
    loaded = load_model(model_spec or live.manifest.model.spec)
    return live.manifest.require_model(loaded, index=live.version_dir, error=IndexUpdateError,
                                       hint="pass --model with the original weights, or rebuild the index")


def _absolute(path: Path | None) -> str | None:
    return str(Path(path).resolve()) if path else None
