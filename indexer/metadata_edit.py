"""Changes to a staged copy of a version's SQLite metadata (published versions are never modified)."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .metadata import ImageRow, cross_item_duplicates


def copy_for_edit(live_metadata: Path, staged_metadata: Path) -> sqlite3.Connection:
    """Copy the live file into the staging folder and open the copy for writing."""
    shutil.copyfile(live_metadata, staged_metadata)
    return sqlite3.connect(staged_metadata)


def _with_temp_ids(conn: sqlite3.Connection, table: str, values: Iterable[str]) -> None:
    # A temporary table rather than `IN (?, ?, ...)`: catalogues can exceed SQLite's parameter limit.
    conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
    conn.execute(f"CREATE TEMP TABLE {table} (value TEXT PRIMARY KEY)")
    conn.executemany(f"INSERT OR IGNORE INTO temp.{table} VALUES (?)", ((v,) for v in values))


def photos_by_hash(conn: sqlite3.Connection, digests: Iterable[str]) -> dict[str, tuple[str, str]]:
    """sha256 -> (item id, stored path) of the indexed photo with those bytes (the lowest vector id)."""
    _with_temp_ids(conn, "wanted_hashes", digests)
    rows = conn.execute("SELECT sha256, item_id, path FROM images JOIN temp.wanted_hashes ON sha256 = value "
                        "ORDER BY vector_id DESC").fetchall()
    return {digest: (item_id, path) for digest, item_id, path in rows}  # descending: lowest id wins


def photos_by_path(conn: sqlite3.Connection, paths: Iterable[str]) -> dict[str, tuple[str, str]]:
    """stored path -> (item id, sha256) for the paths already in the index."""
    _with_temp_ids(conn, "wanted_paths", paths)
    rows = conn.execute("SELECT path, item_id, sha256 FROM images JOIN temp.wanted_paths ON path = value "
                        "ORDER BY vector_id DESC").fetchall()
    return {path: (item_id, digest) for path, item_id, digest in rows}


def existing_items(conn: sqlite3.Connection, item_ids: Iterable[str]) -> dict[str, dict]:
    """item id -> attributes, for those of `item_ids` the index holds."""
    _with_temp_ids(conn, "wanted_items", item_ids)
    rows = conn.execute("SELECT item_id, attributes FROM items JOIN temp.wanted_items ON item_id = value").fetchall()
    return {item_id: json.loads(attributes) for item_id, attributes in rows}


def count_rows(conn: sqlite3.Connection) -> tuple[int, int]:
    """(images, items)"""
    return (conn.execute("SELECT COUNT(*) FROM images").fetchone()[0],
            conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])


def append_images(conn: sqlite3.Connection, rows: Sequence[ImageRow]) -> int:
    """Insert photo rows (their vector ids continue the index's); returns how many items are new.

    A photo of an item already indexed takes that item's attributes, so attribute filters that read
    the photo rows (category) keep finding the whole item; a new item's record takes its first row's columns.
    """
    known = existing_items(conn, (row.item_id for row in rows))
    new_items: dict[str, list] = {}
    more_photos: dict[str, int] = {}
    values = []
    for row in rows:
        if row.item_id in known:
            attributes = known[row.item_id]
            more_photos[row.item_id] = more_photos.get(row.item_id, 0) + 1
        else:
            attributes = row.attributes
            new_items.setdefault(row.item_id, [attributes, 0])[1] += 1
        values.append((row.vector_id, row.item_id, row.path, json.dumps(attributes, sort_keys=True), row.sha256))
    conn.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?)", values)
    conn.executemany("UPDATE items SET image_count = image_count + ? WHERE item_id = ?",
                     [(n, item_id) for item_id, n in more_photos.items()])
    conn.executemany("INSERT INTO items VALUES (?, ?, ?)",
                     [(item_id, json.dumps(a, sort_keys=True), n) for item_id, (a, n) in new_items.items()])
    return len(new_items)


def kept_vector_ids(conn: sqlite3.Connection, removed_items: Iterable[str]) -> np.ndarray:
    """Vector ids of the photos that stay when `removed_items` go, in vector id order."""
    _with_temp_ids(conn, "removed_items", removed_items)
    rows = conn.execute("SELECT vector_id FROM images WHERE item_id NOT IN (SELECT value FROM temp.removed_items) "
                        "ORDER BY vector_id").fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64)


def delete_items(conn: sqlite3.Connection, item_ids: Iterable[str]) -> int:
    """Delete the items and their photos, then renumber the remaining photos 0..n-1 in their old
    order (as the rebuilt FAISS index numbers them). Returns how many photo rows went."""
    _with_temp_ids(conn, "removed_items", item_ids)
    removed = conn.execute("DELETE FROM images WHERE item_id IN (SELECT value FROM temp.removed_items)").rowcount
    conn.execute("DELETE FROM items WHERE item_id IN (SELECT value FROM temp.removed_items)")
    conn.execute("CREATE TEMP TABLE renumber (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
    conn.execute("INSERT INTO temp.renumber SELECT vector_id, ROW_NUMBER() OVER (ORDER BY vector_id) - 1 FROM images")
    # Through negative ids: moving straight to the new ids could collide with a row not yet moved.
    conn.execute("UPDATE images SET vector_id = -1 - (SELECT new FROM temp.renumber WHERE old = vector_id)")
    conn.execute("UPDATE images SET vector_id = -1 - vector_id")
    conn.execute("DROP TABLE temp.renumber")
    return removed


def duplicate_groups(conn: sqlite3.Connection) -> list[list[str]]:
    return cross_item_duplicates(conn.execute("SELECT sha256, item_id FROM images"))


def finish(conn: sqlite3.Connection, compact: bool = False) -> None:
    """Commit and close; `compact` gives the space of deleted rows back to the file system."""
    try:
        conn.commit()
        if compact:
            conn.execute("VACUUM")
    finally:
        conn.close()


def stored_categories(conn: sqlite3.Connection, vector_ids: Sequence[int]) -> list[str]:
    """The category each photo is filtered by, as stored (a photo of a known item takes the item's)."""
    if not vector_ids:
        return []
    low, high = min(vector_ids), max(vector_ids)
    rows = dict(conn.execute("SELECT vector_id, json_extract(attributes, '$.\"category\"') FROM images "
                             "WHERE vector_id BETWEEN ? AND ?", (low, high)).fetchall())
    return ["" if rows.get(v) is None else str(rows[v]) for v in vector_ids]
