"""Writer stage and its reader: the FAISS index, item metadata in SQLite, and the manifest."""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .layout import MANIFEST, METADATA_FILE, resolve_version_dir

if TYPE_CHECKING:
    from .vector_store import StoreConfig, VectorStore

INDEX_FORMAT = "snap2shop-index"
INDEX_FORMAT_VERSION = 2  # 2: the manifest names its vector store (Milvus); FAISS versions still write 1
DEFAULT_INDEX_FACTORY = "Flat"


class IndexBuildError(RuntimeError):
    """The vectors could not be turned into the requested FAISS index."""


class IndexUpdateError(RuntimeError):
    """An add or remove cannot be applied; the live index is left as it was."""


class IndexOpenError(RuntimeError):
    """An index folder cannot be served: missing, corrupt or inconsistent files."""


def make_faiss_index(dim: int, factory: str = DEFAULT_INDEX_FACTORY):
    """An empty index for `dim`-dim unit vectors; inner product equals cosine similarity."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else str(exc)
        raise IndexBuildError(f"invalid FAISS index factory string {factory!r}: {first_line}") from None


def build_faiss_index(vectors: np.ndarray, factory: str = DEFAULT_INDEX_FACTORY):
    index = make_faiss_index(vectors.shape[1], factory)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    try:
        if not index.is_trained:
            index.train(_training_sample(index, vectors))
        index.add(vectors)
    except RuntimeError as exc:
        raise IndexBuildError(
            f"FAISS could not build {factory!r} from {len(vectors)} vectors: "
            f"{str(exc).strip().splitlines()[-1]} (small catalogues need fewer clusters, or 'Flat')"
        ) from None
    return index


def _training_sample(index, vectors: np.ndarray) -> np.ndarray:
    """IVF k-means on a seeded sample of the vectors: at 1M vectors, minutes faster, same recall (bench)."""
    import faiss

    from .index_choice import TRAINING_POINTS_PER_LIST

    try:
        lists = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        return vectors
    limit = TRAINING_POINTS_PER_LIST * lists
    if len(vectors) <= limit:
        return vectors
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), limit, replace=False))
    return vectors[rows]


def write_faiss(index, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


@dataclass(frozen=True)
class ImageRow:
    vector_id: int
    item_id: str
    path: str
    attributes: dict
    sha256: str = ""


def write_metadata(path: Path, rows: Iterable[ImageRow]) -> int:
    """One row per vector; `items` keeps the first-seen attributes of each item."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            """
            CREATE TABLE images (vector_id INTEGER PRIMARY KEY, item_id TEXT NOT NULL,
                                 path TEXT NOT NULL, attributes TEXT NOT NULL, sha256 TEXT NOT NULL);
            CREATE INDEX images_by_item ON images(item_id);
            CREATE INDEX images_by_sha256 ON images(sha256);
            CREATE TABLE items (item_id TEXT PRIMARY KEY, attributes TEXT NOT NULL,
                                image_count INTEGER NOT NULL);
            """
        )
        items: dict[str, list] = {}
        batch = []
        for row in rows:
            batch.append((row.vector_id, row.item_id, row.path, json.dumps(row.attributes, sort_keys=True), row.sha256))
            entry = items.setdefault(row.item_id, [row.attributes, 0])
            entry[1] += 1
        conn.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?)", batch)
        conn.executemany("INSERT INTO items VALUES (?, ?, ?)",
                         [(k, json.dumps(v[0], sort_keys=True), v[1]) for k, v in items.items()])
        conn.commit()
        return len(items)
    finally:
        conn.close()


def cross_item_duplicates(hashes_and_items: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Groups of different items that share a byte-identical photo: search cannot tell them apart."""
    by_hash: dict[str, set[str]] = {}
    for digest, item_id in hashes_and_items:
        by_hash.setdefault(digest, set()).add(item_id)
    return sorted(sorted(items) for items in by_hash.values() if len(items) > 1)


def write_manifest(path: Path, manifest: dict) -> None:
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class MetadataStore:
    """Read-only access to an index version's SQLite metadata, safe to share between threads."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise IndexOpenError(f"metadata file {path} is missing")
        # immutable=1: versions are never modified after publishing, so SQLite may skip locking.
        self._conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            self.count_images()
        except sqlite3.DatabaseError as exc:
            raise IndexOpenError(f"metadata file {path} is corrupt: {exc}") from None

    def count_images(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def count_items(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def vector_ids_where(self, field: str, value: str) -> np.ndarray:
        """Vector ids of the photos whose catalogue column `field` equals `value`."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT vector_id FROM images WHERE json_extract(attributes, ?) = ? ORDER BY vector_id",
                (_json_path(field), value),
            ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def attribute_counts(self, field: str) -> list[tuple[str, int]]:
        """Distinct values of an item column with their item counts, most common first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT json_extract(attributes, ?) AS value, COUNT(*) FROM items "
                "WHERE value IS NOT NULL AND value != '' GROUP BY value ORDER BY COUNT(*) DESC, value",
                (_json_path(field),),
            ).fetchall()
        return [(str(r[0]), r[1]) for r in rows]

    def images_for_vectors(self, vector_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """vector id -> (item id, image path)"""
        ids = [int(v) for v in vector_ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT vector_id, item_id, path FROM images WHERE vector_id IN ({marks})", ids
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def item(self, item_id: str) -> dict | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT attributes, image_count FROM items WHERE item_id = ?", (item_id,)
            ).fetchone()
            if row is None:
                return None
            paths = [r[0] for r in self._conn.execute(
                "SELECT path FROM images WHERE item_id = ? ORDER BY vector_id", (item_id,))]
        return {"item_id": item_id, "attributes": json.loads(row[0]), "image_count": row[1], "images": paths}

    def items(self, item_ids: Sequence[str]) -> dict[str, dict]:
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT item_id, attributes FROM items WHERE item_id IN ({marks})", ids
            ).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def close(self) -> None:
        self._conn.close()


def _json_path(field: str) -> str:
    # Quoted member name: a column called "a.b" or "x y" must not be read as a path expression.
    return '$."' + field.replace('"', '""') + '"'


@dataclass
class OpenedIndex:
    version_dir: Path
    manifest: dict
    store: "VectorStore"
    metadata: MetadataStore

    @property
    def faiss_index(self):
        """The FAISS index of a version in the FAISS store (tests and FAISS-only tools)."""
        index = getattr(self.store, "index", None)
        if index is None:
            raise AttributeError(f"{self.version_dir} is held in a {self.store.kind} store, not FAISS")
        return index

    @property
    def image_root(self) -> Path:
        """Where the catalogue was when the index was built: the default root of its photo paths."""
        return Path(self.manifest["catalog"]["image_root"])

    def resolve_image_path(self, stored: str, root: Path | None = None) -> Path:
        """A stored photo path on disk. Photos under the catalogue root are stored relative to it, so
        `root` (the catalogue's folder now, when it has moved) re-points them; a photo that was
        outside the root is stored absolute and stays where it was."""
        path = Path(stored)
        return path if path.is_absolute() else (self.image_root if root is None else root) / path

    def close(self) -> None:
        self.store.close()
        self.metadata.close()


def read_manifest(index_dir: str | Path) -> tuple[Path, dict]:
    version_dir = resolve_version_dir(index_dir)
    try:
        manifest = json.loads((version_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexOpenError(f"{version_dir / MANIFEST} is unreadable or not JSON: {exc}") from None
    if manifest.get("format") != INDEX_FORMAT:
        raise IndexOpenError(f"{version_dir / MANIFEST} is not a snap2shop index manifest")
    if manifest.get("format_version", 0) > INDEX_FORMAT_VERSION:
        raise IndexOpenError(f"{version_dir} was written by a newer snap2shop (format {manifest['format_version']})")
    return version_dir, manifest


def format_version_for(store_kind: str) -> int:
    """FAISS versions keep format 1, which earlier releases read; a Milvus version needs this one."""
    return 1 if store_kind == "faiss" else INDEX_FORMAT_VERSION


def open_index(index_dir: str | Path, store: "StoreConfig | None" = None, index_device: str = "cpu") -> OpenedIndex:
    """Load the live version, checking that its store, metadata and manifest agree with each other.

    `store` overrides where a Milvus store is reached; `index_device` places a FAISS index (service)."""
    from .vector_store import open_store

    version_dir, manifest = read_manifest(index_dir)
    metadata = MetadataStore(version_dir / METADATA_FILE)
    try:
        vectors = open_store(version_dir, manifest, metadata.vector_ids_where, store, index_device)
    except BaseException:
        metadata.close()
        raise
    opened = OpenedIndex(version_dir=version_dir, manifest=manifest, store=vectors, metadata=metadata)
    count, rows = vectors.count(), metadata.count_images()
    problem = None
    if vectors.dim != manifest["dim"]:
        problem = f"the {vectors.kind} store holds {vectors.dim}-dim vectors but the manifest says {manifest['dim']}"
    elif count != rows or count != manifest["counts"]["vectors"]:
        problem = (f"{version_dir} is inconsistent: {count} vectors in the {vectors.kind} store, "
                   f"{rows} rows in metadata, {manifest['counts']['vectors']} in the manifest")
    if problem is not None:
        opened.close()
        raise IndexOpenError(problem)
    return opened
