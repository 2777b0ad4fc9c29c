"""Vector stores: the contract (base), FAISS (faiss, with its vectors, filters and placement) and
Milvus (milvus), and the dispatch on the store kind, here, for the rest of the indexer to call."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .base import (DEFAULT_COLLECTION, STAGED_STORE_FILE, STORE_KINDS, StoreConfig, StoreHits, VectorStore,
                    categories_of, store_config_of, write_staged_marker)
from .index_choice import IndexChoice

__all__ = ["DEFAULT_COLLECTION", "STAGED_STORE_FILE", "STORE_KINDS", "StoreConfig", "StoreHits", "VectorStore",
           "build_store", "categories_of", "check_index_request", "check_reachable", "index_choice_for",
           "open_store", "release_folder_store", "store_config_of", "write_staged_marker"]

log = logging.getLogger("snap2shop.indexer")


def index_choice_for(config: StoreConfig, requested: str, n_vectors: int, dim: int) -> IndexChoice:
    """The index for a build: `auto` picks exact or IVF by size for both stores (index_choice)."""
    from .index_choice import choose_index

    choice = choose_index(requested, n_vectors, dim)
    if config.kind == "milvus":
        from .milvus import milvus_index_for

        milvus_index_for(choice, config.milvus_uri)  # refuses what this Milvus cannot build
    return choice


def check_index_request(config: StoreConfig, requested: str, dim: int) -> None:
    """Fail on an index the store cannot build before minutes of encoding, not after."""
    from .index_choice import AUTO

    if requested == AUTO:
        return
    if config.kind == "milvus":
        from .milvus import milvus_index_for

        milvus_index_for(IndexChoice(requested), config.milvus_uri)
    else:
        from .faiss import make_faiss_index

        make_faiss_index(dim, requested)


def check_reachable(config: StoreConfig) -> None:
    """Connect once to a Milvus store (no server, a Lite file another process holds: an error now)."""
    if config.kind == "milvus" and not config.milvus_uri:
        raise ValueError("--store milvus needs --milvus-uri (a Milvus Lite file *.db, or http://host:19530)")
    if config.kind == "milvus":
        from .milvus import connect, disconnect

        disconnect(connect(config.milvus_uri), config.milvus_uri)


def build_store(config: StoreConfig, vectors: np.ndarray, categories: Sequence[str], choice: IndexChoice,
                staging: Path, owner: Path) -> VectorStore:
    """A staged store for a new index holding `vectors` (ids 0..n-1)."""
    if config.kind == "milvus":
        from .milvus import MilvusStore

        return MilvusStore.build(config, vectors, categories, choice, staging, owner)
    from .faiss import FaissStore

    return FaissStore.build(vectors, choice)


def open_store(version_dir: Path, section: dict, ids_where: Callable[[str, str], np.ndarray],
               override: StoreConfig | None = None, index_device: str = "cpu") -> VectorStore:
    """The live store of a version, to search or to stage the next version from.

    `section` is the manifest's `store` (what `persist` returned); `ids_where(field, value)` gives
    the vector ids of a metadata filter, for stores that filter by id.
    """
    config = store_config_of(section, override)
    if config.kind == "milvus":
        from .milvus import MilvusStore

        return MilvusStore.open(config, section)
    from .faiss import FaissStore

    return FaissStore.open(version_dir, ids_where, index_device)


def release_folder_store(folder: Path, override: StoreConfig | None = None) -> None:
    """Drop the Milvus collection of a removed version or abandoned staging folder (FAISS keeps
    its vectors inside the folder, which goes with it). Best effort: a failure is logged."""
    from ..manifest import store_section_in

    section = store_section_in(folder)
    if section is None:
        try:
            section = json.loads((folder / STAGED_STORE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
    if not isinstance(section, dict) or section.get("kind") != "milvus" or not section.get("collection_name"):
        return
    try:
        from .milvus import drop_collection

        drop_collection(store_config_of(section, override), section["collection_name"])
    except Exception as exc:  # clean-up must never fail the change that triggered it
        log.warning("could not drop Milvus collection %s of %s: %s", section.get("collection_name"), folder, exc)


