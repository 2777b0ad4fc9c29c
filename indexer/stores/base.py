"""The vector-store contract: where an index version's vectors live and how they are searched.

An index version is always a folder (manifest, SQLite metadata) published by the `current` link;
the store holds its vectors, numbered by vector id 0..n-1, with each photo's category so that
filtered searches run inside the store. Two implementations:

- `faiss` (the default): an `index.faiss` file in the version folder, loaded into the process.
- `milvus`: one collection per version on a Milvus server (`http://host:19530`) or in a Milvus Lite
  file (`*.db`), for catalogues past one machine's memory.

Versions stay immutable whatever the store: an add or remove writes the next version's store beside
the live one (a copy of the FAISS index, a new Milvus collection) and publishing switches both at once.
"""
from __future__ import annotations

import abc
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

import numpy as np

from ..errors import StoreUnavailableError

if TYPE_CHECKING:
    from ..manifest import Manifest


STORE_KINDS = ("faiss", "milvus")


DEFAULT_COLLECTION = "snap2shop"


STAGED_STORE_FILE = "store.json"  # in a staging folder: which store it was writing, for clean-up


_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


@dataclass(frozen=True)
class StoreConfig:
    """Which store a build writes to, or where a reader reaches an index's Milvus store.

    For an existing index the manifest says which store holds it; `milvus_uri` then only overrides
    where that Milvus is reached (a service in a container reaches it under another host name).
    """

    kind: str = "faiss"
    milvus_uri: str | None = None
    collection: str | None = None  # prefix of the per-version collection names

    def __post_init__(self) -> None:
        if self.kind not in STORE_KINDS:
            raise ValueError(f"store must be one of {', '.join(STORE_KINDS)}, got {self.kind!r}")
        if self.kind == "faiss" and (self.milvus_uri or self.collection):
            raise ValueError("--milvus-uri and --collection need --store milvus")
        if self.collection is not None and not _COLLECTION_NAME.fullmatch(self.collection):
            raise ValueError(f"collection name {self.collection!r} must start with a letter or _ and hold only "
                             f"letters, digits and _ (at most 200 characters)")

    @classmethod
    def from_options(cls, store: str | None, milvus_uri: str | None, collection: str | None) -> "StoreConfig":
        """From command-line or environment values; a Milvus URI or collection alone implies milvus."""
        kind = store or ("milvus" if milvus_uri or collection else "faiss")
        return cls(kind, milvus_uri or None, collection or None)

    @classmethod
    def override_from(cls, store: str | None, milvus_uri: str | None,
                      collection: str | None) -> "StoreConfig | None":
        """For an existing index: None (use the manifest's store as it is) unless something was given."""
        if not (store or milvus_uri or collection):
            return None
        # Without a URI, --store milvus only checks the kind: the manifest knows where its Milvus is.
        return cls.from_options(store, milvus_uri, collection)

    @property
    def collection_prefix(self) -> str:
        return self.collection or DEFAULT_COLLECTION


@dataclass(frozen=True)
class StoreHits:
    scores: np.ndarray  # best first
    ids: np.ndarray  # vector ids, -1 past the last hit
    can_widen: bool  # an approximate store could find more filtered hits if asked to look wider


class VectorStore(abc.ABC):
    """The vectors of one index version. Readers search it; a writer fills a staged one."""

    kind: ClassVar[str]
    dim: int
    placement: str = "cpu"
    exact: bool = True  # vectors() gives back the vectors as added (no quantisation)

    @abc.abstractmethod
    def count(self, category: str | None = None) -> int:
        """Vectors held, or those of photos in `category`."""

    @abc.abstractmethod
    def search(self, query: np.ndarray, fetch: int, category: str | None = None, widen: int = 1) -> StoreHits:
        """The `fetch` nearest vectors to one (1, dim) query by inner product, optionally only in
        `category`; `widen` multiplies how much of an approximate index is explored."""

    @abc.abstractmethod
    def add(self, vectors: np.ndarray, categories: Sequence[str]) -> None:
        """Append vectors; they take the ids count().. in order."""

    @abc.abstractmethod
    def stage_next(self, staging: Path, kept_ids: np.ndarray | None = None) -> "VectorStore":
        """The next version's store, staged beside the live one: the live vectors, or only `kept_ids`
        renumbered 0..len-1 in their old order. The live store is left as it is."""

    @abc.abstractmethod
    def vectors(self, vector_ids: np.ndarray) -> np.ndarray:
        """The stored vectors at `vector_ids` (approximations where `exact` is false)."""

    @abc.abstractmethod
    def persist(self, staging: Path) -> dict:
        """Make a staged store durable beside the staged version; returns the manifest's `store`."""

    def consistency_problems(self, manifest: "Manifest") -> list[str]:
        """Problems only this kind of store can see (`indexer verify`)."""
        return []

    def describe(self) -> dict:
        return {"kind": self.kind, "placement": self.placement}

    def discard(self) -> None:
        """Drop what a staged store wrote outside the staging folder (a failed change)."""

    def close(self) -> None:
        """Release connections and files."""


def store_config_of(section: dict, override: StoreConfig | None = None) -> StoreConfig:
    """The store an index version was written to (its manifest's `store` section), reached where
    `override` says (its Milvus URI)."""
    kind = section.get("kind", "faiss")
    if override is not None and override.kind != kind:
        raise StoreUnavailableError(f"the index is held in a {kind} store, not in {override.kind} "
                                    f"(drop --store/--milvus-uri, or give the index's own store)")
    if kind == "faiss":
        return StoreConfig("faiss")
    if override is not None and override.collection and override.collection != section.get("collection"):
        raise StoreUnavailableError(f"the index's Milvus collections are named {section.get('collection')}_*, "
                                    f"not {override.collection}_*")
    uri = (override.milvus_uri if override is not None and override.milvus_uri else None) or section.get("uri")
    return StoreConfig("milvus", uri, section.get("collection"))


def write_staged_marker(staging: Path, section: dict) -> None:
    """Before a store writes outside the staging folder, note where, so a writer that dies mid-way
    has its leftovers removed by the next one (layout's clean-up calls `release_folder_store`)."""
    (staging / STAGED_STORE_FILE).write_text(json.dumps(section, sort_keys=True) + "\n", encoding="utf-8")


def categories_of(attributes: Sequence[dict]) -> list[str]:
    """The category of each photo, as filtered searches match it ('' when it has none)."""
    out = []
    for attrs in attributes:
        value = attrs.get("category") if isinstance(attrs, dict) else None
        out.append("" if value is None else str(value))
    return out
