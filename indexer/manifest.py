"""An index version's manifest (manifest.json): what it was built from and how, read and written here.

The rest of the tree reads it as a `Manifest`, by attribute, and asks it one question through
`require_model`: is this loaded model the one the vectors were made with? A manifest round-trips:
keys this release does not know are kept, and keys an older release never wrote stay unwritten, so
rewriting a version's manifest (add, remove) changes only what the change changed, and the file
stays what earlier releases read.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from model import LoadedModel, Preprocessing
from model.config import AdapterConfig

from .errors import IndexOpenError, ModelMismatchError
from .layout import MANIFEST, resolve_version_dir


INDEX_FORMAT = "snap2shop-index"


INDEX_FORMAT_VERSION = 2  # 2: the manifest names its vector store (Milvus); FAISS versions still write 1


def format_version_for(store_kind: str) -> int:
    """FAISS versions keep format 1, which earlier releases read; a Milvus version needs this one."""
    return 1 if store_kind == "faiss" else INDEX_FORMAT_VERSION


def _split(data: dict, cls: type, where: str) -> tuple[dict, dict]:
    """(the values of `cls`'s fields, the keys it does not know), refusing a missing required field."""
    names = {f.name for f in fields(cls)} - {"extra", "absent"}
    required = [f.name for f in fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if not isinstance(data, dict):
        raise ValueError(f"{where.rstrip('.') or 'the manifest'} is not a JSON object")
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"it lacks {', '.join(where + name for name in missing)}")
    return ({k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names})


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights made a set of vectors: where they were loaded from, and the sha256 of the
    weights themselves, so a file that moved is still the same model and a retrained one is not."""

    spec: str
    checksum: str

    def matches(self, loaded: LoadedModel) -> bool:
        return loaded.checksum == self.checksum

    def require_model(self, loaded: LoadedModel, *, role: str, hint: str,
                      error: type[Exception] = ModelMismatchError) -> LoadedModel:
        """`loaded`, when it holds these weights; else `error`, naming both weights and ending with
        `hint` (what to do). `role` completes "is not the model ...": "index X was built with"."""
        if not self.matches(loaded):
            raise error(f"model {loaded.spec} (weights sha256 {loaded.checksum[:12]}) is not the model {role} "
                        f"({self.spec}, sha256 {self.checksum[:12]}); its vectors would not be comparable: {hint}")
        return loaded


@dataclass(frozen=True)
class IndexedModel(ModelIdentity):
    """The manifest's `model`: the identity of its weights and the EmbedderConfig they were built
    with, kept as model/ wrote it (model/ owns that schema: EmbedderConfig.from_dict reads it)."""

    config: dict
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "IndexedModel":
        known, extra = _split(data, cls, "model.")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        return self.extra | {"spec": self.spec, "checksum": self.checksum, "config": self.config}


@dataclass(frozen=True)
class Counts:
    """`vectors` and `items` are the live totals; `photos_found` and `skipped` describe the build
    (a change is counted in its history entry)."""

    vectors: int
    items: int
    photos_found: int
    skipped: int
    duplicate_photo_groups: int | None = None  # None: built by a release that did not count them
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "Counts":
        known, extra = _split(data, cls, "counts.")
        for key in ("vectors", "items"):  # every consistency check leans on these two
            value = known[key]
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"counts.{key} is not a number ({value!r})")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        counts = {"vectors": self.vectors, "items": self.items, "photos_found": self.photos_found,
                  "skipped": self.skipped}
        if self.duplicate_photo_groups is not None:
            counts["duplicate_photo_groups"] = self.duplicate_photo_groups
        return self.extra | counts


@dataclass(frozen=True)
class CatalogSource:
    """Where the catalogue was at build time; `image_root` is the default root of the relative
    photo paths in the metadata (kept as written: a moved catalogue is re-pointed, not rewritten)."""

    image_root: str
    csv: str | None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "CatalogSource":
        known, extra = _split(data, cls, "catalog.")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        return self.extra | {"image_root": self.image_root, "csv": self.csv}


# Keys a build writes that earlier releases' builds did not, with what a manifest without them
# means; they stay unwritten until a change gives them a value (see `Manifest.replace`).
_ABSENT_MEANS: dict[str, Any] = {
    "format_version": 0,
    "query_preprocessing": None,  # the catalogue's preprocessing, filled in by from_dict
    "query_head": None,
    "store": {"kind": "faiss"},  # versions before the store seam were all FAISS
    "index_choice": {},
    "duplicate_photo_groups": [],
    "encode": {},
}


@dataclass(frozen=True)
class Manifest:
    """manifest.json as typed fields. `timings`, `environment`, `encode`, `index_choice` and `store`
    stay dicts: they are records whose keys vary by engine and store (the store kind reads its own).

    `extra` holds the keys this release does not know; `absent` the optional keys the manifest read
    lacked, which to_dict leaves out again."""

    snap2shop_version: str
    built_at: str
    model: IndexedModel
    dim: int
    metric: str
    index_factory: str
    preprocessing: Preprocessing
    # What the service does to an upload: its own preprocessing (the catalogue's where an older
    # manifest names none), and the query-side head of an adapted model, as model/ wrote it.
    query_preprocessing: Preprocessing
    query_head: dict | None
    catalog: CatalogSource
    counts: Counts
    skipped: list[dict]
    timings: dict
    environment: dict
    format_version: int
    format: str = INDEX_FORMAT
    store: dict = field(default_factory=lambda: {"kind": "faiss"})
    index_choice: dict = field(default_factory=dict)
    duplicate_photo_groups: list[list[str]] = field(default_factory=list)
    encode: dict = field(default_factory=dict)  # the batch size the forward passes ran at
    # Written from the first change (add, remove) on; a version as built has neither.
    updated_at: str | None = None
    history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    absent: frozenset[str] = frozenset()

    @property
    def query_adapter(self) -> AdapterConfig | None:
        return AdapterConfig.from_dict(self.query_head) if self.query_head else None

    def replace(self, **changes: Any) -> "Manifest":
        """A copy with `changes`; a field given a value here is written even where the manifest read lacked it."""
        return dataclasses.replace(self, **changes, absent=self.absent - changes.keys())

    def require_model(self, loaded: LoadedModel, *, index: str | Path, hint: str,
                      error: type[Exception] = ModelMismatchError, embedding: bool = False) -> LoadedModel:
        """`loaded`, when it holds the weights this index was built with; else `error` naming both,
        the index, and `hint` (what to do).

        `embedding`: also its embedding dim and photo preprocessing, which queries must share with
        the stored vectors to be searched against them. They are checked first, since they say more
        than two checksums do."""
        if embedding:
            dim = loaded.model.embedding_dim
            if dim != self.dim:
                raise error(f"model {loaded.spec} makes {dim}-dim embeddings but index {index} holds "
                            f"{self.dim}-dim vectors; {hint}")
            prep = loaded.config.preprocessing
            if not prep.matches(self.preprocessing):
                raise error(f"model {loaded.spec} preprocesses photos as {prep.to_dict()} but index {index} was "
                            f"built with {self.preprocessing.to_dict()}; {hint}")
        return self.model.require_model(loaded, role=f"index {index} was built with", hint=hint, error=error)

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        """Raises ValueError, TypeError or AttributeError for a manifest that lacks or garbles a field
        that every release wrote."""
        data = copy.deepcopy(data)  # the Manifest shares no lists or dicts with its source
        absent = frozenset(key for key in _ABSENT_MEANS if key not in data)
        values, extra = _split({key: copy.deepcopy(meaning) for key, meaning in _ABSENT_MEANS.items()} | data,
                               cls, "")
        values["model"] = IndexedModel.from_dict(values["model"])
        values["catalog"] = CatalogSource.from_dict(values["catalog"])
        values["counts"] = Counts.from_dict(values["counts"])
        values["preprocessing"] = Preprocessing.from_dict(values["preprocessing"])
        query = values["query_preprocessing"]
        values["query_preprocessing"] = values["preprocessing"] if query is None else Preprocessing.from_dict(query)
        return cls(**values, extra=extra, absent=absent)

    def to_dict(self) -> dict:
        data = self.extra | {
            "format": self.format, "format_version": self.format_version, "snap2shop_version": self.snap2shop_version,
            "built_at": self.built_at, "model": self.model.to_dict(), "dim": self.dim, "metric": self.metric,
            "index_factory": self.index_factory, "preprocessing": self.preprocessing.to_dict(),
            "query_preprocessing": self.query_preprocessing.to_dict(), "query_head": self.query_head,
            "store": self.store, "index_choice": self.index_choice, "catalog": self.catalog.to_dict(),
            "counts": self.counts.to_dict(), "skipped": self.skipped,
            "duplicate_photo_groups": self.duplicate_photo_groups, "encode": self.encode,
            "timings": self.timings, "environment": self.environment, "updated_at": self.updated_at,
            "history": self.history,
        }
        if self.updated_at is None:
            del data["updated_at"]
        if not self.history:
            del data["history"]
        for key in self.absent:
            data.pop(key, None)
        return copy.deepcopy(data)


def write_manifest(path: Path, manifest: Manifest) -> None:
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_manifest(path: Path) -> Manifest:
    """The manifest file at `path`; IndexOpenError if it is unreadable, foreign, newer or incomplete."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexOpenError(f"{path} is unreadable or not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise IndexOpenError(f"{path} is not a snap2shop index manifest")
    version = data.get("format_version", 0)
    if isinstance(version, int) and version > INDEX_FORMAT_VERSION:
        raise IndexOpenError(f"{path.parent} was written by a newer snap2shop (format {version})")
    try:
        if not isinstance(version, int):
            raise ValueError(f"format_version is {version!r}")
        return Manifest.from_dict(data)
    except (ValueError, TypeError, AttributeError) as exc:
        raise IndexOpenError(f"{path} is not a complete snap2shop index manifest: {exc}") from None


def read_manifest(index_dir: str | Path) -> tuple[Path, Manifest]:
    """The live version folder of `index_dir` (or `index_dir` itself, a version folder) and its manifest."""
    version_dir = resolve_version_dir(index_dir)
    return version_dir, load_manifest(version_dir / MANIFEST)


def store_section_in(folder: Path) -> dict | None:
    """The `store` section of the manifest in `folder`, read leniently: clean-up must find a
    version's Milvus collection even when the rest of its manifest is damaged."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    section = data.get("store") if isinstance(data, dict) else None
    return section if isinstance(section, dict) else None
