"""An index version's item metadata in SQLite: one row per vector (item id, photo path, sha256,
the catalogue's columns), written once by a build and read by the service and the tools."""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import IndexOpenError


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
