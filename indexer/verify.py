"""`indexer verify`: does an index version hold what its manifest claims? Each problem is one line.

The quick checks read only the index: its vector store (FAISS file or Milvus collection), metadata and
manifest agree on counts and dimensions, vector ids are 0..n-1, the items table agrees with the
photos, vectors are unit length.
The deep checks also read every photo (present, same sha256) and re-embed a sample with the index's
model, comparing with the stored vectors.
"""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np

from .layout import METADATA_FILE
from .errors import IndexOpenError, ModelMismatchError
from .manifest import Manifest, read_manifest
from .stores import StoreConfig, VectorStore, open_store
from .stores.faiss_vectors import in_chunks

DEEP_SAMPLE = 20
MAX_EXAMPLES = 10  # per kind of problem; the counts are always complete
NORM_TOLERANCE = 1e-3
# Re-embedding in fp32 repeats an fp32 build's computation; a bf16 build differs from it by rounding.
MIN_COSINE = {"fp32": 0.999, "bf16": 0.99}


def verify_index(index_dir: str | Path, deep: bool = False, sample: int = DEEP_SAMPLE,
                 device: str = "cpu", store: StoreConfig | None = None) -> list[str]:
    """Problems found in the live version of `index_dir` (or in a version folder); empty when consistent.

    Raises IndexLayoutError / IndexOpenError when there is no readable manifest to check against (one
    that lacks or garbles a field is not readable), and StoreUnavailableError when its Milvus store
    cannot be reached (`store` says where it is).
    """
    version_dir, manifest = read_manifest(index_dir)
    problems: list[str] = []
    try:
        vectors = open_store(version_dir, manifest.store, ids_where=None, override=store)
    except IndexOpenError as exc:
        problems.append(str(exc))
        vectors = None
    conn = _open_metadata(version_dir, problems)
    try:
        rows = None
        if conn is not None:
            rows = _check_metadata(conn, manifest, problems)
        if vectors is not None:
            _check_store(vectors, manifest, rows, problems)
        if deep and conn is not None:
            _check_photos_and_embeddings(conn, vectors, version_dir, manifest, sample, device, problems)
    finally:
        if conn is not None:
            conn.close()
        if vectors is not None:
            vectors.close()
    return problems


def _open_metadata(version_dir: Path, problems: list[str]) -> sqlite3.Connection | None:
    path = version_dir / METADATA_FILE
    if not path.is_file():
        problems.append(f"metadata file {path} is missing")
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        conn.execute("SELECT vector_id, item_id, path, sha256 FROM images LIMIT 1").fetchall()
        conn.execute("SELECT item_id, attributes, image_count FROM items LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        problems.append(f"metadata file {path} is corrupt or lacks its tables: {exc}")
        conn.close()
        return None
    return conn


def _examples(values: list) -> str:
    shown = ", ".join(str(v) for v in values[:MAX_EXAMPLES])
    return shown + (f" and {len(values) - MAX_EXAMPLES} more" if len(values) > MAX_EXAMPLES else "")


def _check_metadata(conn: sqlite3.Connection, manifest: Manifest, problems: list[str]) -> int:
    """Checks the metadata on its own and against the manifest; returns its photo row count."""
    rows, low, high = conn.execute("SELECT COUNT(*), MIN(vector_id), MAX(vector_id) FROM images").fetchone()
    items = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    if rows and (low != 0 or high != rows - 1):
        problems.append(f"vector ids are not contiguous: {rows} photo rows with ids {low}..{high}, "
                        f"expected 0..{rows - 1}")
    if manifest.counts.vectors != rows:
        problems.append(f"photo count: metadata holds {rows} photo rows, the manifest says {manifest.counts.vectors}")
    if manifest.counts.items != items:
        problems.append(f"item count: metadata holds {items} items, the manifest says {manifest.counts.items}")
    miscounted = conn.execute(
        "SELECT items.item_id, items.image_count, COUNT(images.vector_id) AS n FROM items "
        "LEFT JOIN images ON images.item_id = items.item_id GROUP BY items.item_id "
        "HAVING n > 0 AND n != items.image_count ORDER BY items.item_id").fetchall()
    if miscounted:
        problems.append(f"{len(miscounted)} items have a wrong image_count: "
                        + _examples([f"{i} says {said}, has {n}" for i, said, n in miscounted]))
    orphans = [r[0] for r in conn.execute(
        "SELECT item_id FROM items WHERE item_id NOT IN (SELECT item_id FROM images) ORDER BY item_id")]
    if orphans:
        problems.append(f"{len(orphans)} items have no photos: {_examples(orphans)}")
    homeless = [r[0] for r in conn.execute(
        "SELECT DISTINCT item_id FROM images WHERE item_id NOT IN (SELECT item_id FROM items) ORDER BY item_id")]
    if homeless:
        problems.append(f"photos of {len(homeless)} items missing from the items table: {_examples(homeless)}")
    return rows


def _check_store(vectors: VectorStore, manifest: Manifest, metadata_rows: int | None, problems: list[str]) -> None:
    store = f"the {vectors.kind} store"
    if vectors.dim != manifest.dim:
        problems.append(f"dimensions: {store} holds {vectors.dim}-dim vectors, the manifest says {manifest.dim}")
    problems.extend(vectors.consistency_problems(manifest))
    count = vectors.count()
    if count != manifest.counts.vectors:
        problems.append(f"vector count: {store} holds {count} vectors, the manifest says {manifest.counts.vectors}")
    if metadata_rows is not None and count != metadata_rows:
        problems.append(f"vector count: {store} holds {count} vectors, the metadata {metadata_rows} photo rows")
    if count == 0 or not vectors.exact:
        return  # quantised vectors are not exactly unit length, so there is nothing to hold them to
    bad = []
    checked = count if metadata_rows is None else min(count, metadata_rows)
    for ids in in_chunks(np.arange(checked, dtype=np.int64)):
        try:
            norms = np.linalg.norm(vectors.vectors(ids), axis=1)
        except IndexOpenError as exc:  # a store keyed by id (Milvus) can lack some of them
            problems.append(str(exc))
            return
        off = ~np.isfinite(norms) | (np.abs(norms - 1.0) > NORM_TOLERANCE)
        bad.extend(f"id {i} norm {n:.4f}" for i, n in zip(ids[off].tolist(), norms[off].tolist()))
    if bad:
        problems.append(f"{len(bad)} vectors are not unit length: {_examples(bad)}")


def _check_photos_and_embeddings(conn: sqlite3.Connection, vectors: VectorStore | None, version_dir: Path,
                                 manifest: Manifest, sample: int, device: str, problems: list[str]) -> None:
    root = Path(manifest.catalog.image_root)
    intact: list[tuple[int, Path]] = []
    missing, changed = [], []
    for vector_id, stored, digest in conn.execute("SELECT vector_id, path, sha256 FROM images ORDER BY vector_id"):
        path = Path(stored) if Path(stored).is_absolute() else root / stored
        try:
            with open(path, "rb") as handle:
                actual = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError:
            missing.append(str(path))
            continue
        if actual != digest:
            changed.append(str(path))
        else:
            intact.append((vector_id, path))
    if missing:
        problems.append(f"{len(missing)} photos are missing or unreadable: {_examples(missing)}")
    if changed:
        problems.append(f"{len(changed)} photos changed since they were indexed (sha256 differs): {_examples(changed)}")
    intact = [(vid, path) for vid, path in intact if vectors is not None and vid < vectors.count()]
    if intact and sample > 0:
        _check_sample_embeddings(vectors, version_dir, manifest, intact, sample, device, problems)


def _check_sample_embeddings(vectors: VectorStore, version_dir: Path, manifest: Manifest,
                             intact: list[tuple[int, Path]], sample: int, device: str, problems: list[str]) -> None:
    from model import CheckpointError, WeightsUnavailableError, load_model
    from model.inference import plan_inference, resolve_device

    from .encode import encode_paths

    spec = manifest.model.spec
    try:
        loaded = load_model(spec)
    except (CheckpointError, WeightsUnavailableError, ValueError, OSError, RuntimeError) as exc:
        problems.append(f"cannot re-embed photos: the index's model {spec} does not load: {exc}")
        return
    try:
        manifest.require_model(loaded, index=version_dir, hint="its weights changed since the build, so searches "
                               "would not match: put the original weights back, or rebuild the index")
    except ModelMismatchError as exc:
        problems.append(str(exc))
        return
    if not vectors.exact or loaded.model.embedding_dim != vectors.dim:
        return  # quantised vectors cannot be held to a cosine near 1; a dim mismatch is reported already
    picks = sorted({int(i) for i in np.linspace(0, len(intact) - 1, min(sample, len(intact))).round()})
    chosen = [intact[i] for i in picks]
    torch_device = resolve_device(device)
    encoded = encode_paths([p for _, p in chosen], loaded, batch_size=8, device=torch_device, workers=0,
                           progress=False, plan=plan_inference(torch_device, "fp32"))
    for position, reason in encoded.failures:
        problems.append(f"photo {chosen[position][1]} no longer decodes: {reason}")
    ids = np.array([chosen[i][0] for i in encoded.ok_indices.tolist()], dtype=np.int64)
    stored = vectors.vectors(ids)
    cosines = np.sum(stored * encoded.embeddings, axis=1) / np.maximum(
        np.linalg.norm(stored, axis=1) * np.linalg.norm(encoded.embeddings, axis=1), 1e-12)
    threshold = MIN_COSINE.get(manifest.timings.get("precision", "fp32"), MIN_COSINE["fp32"])
    bad = [f"id {vid} ({chosen[i][1].name}) cosine {c:.4f}"
           for i, vid, c in zip(encoded.ok_indices.tolist(), ids.tolist(), cosines.tolist()) if c < threshold]
    if bad:
        problems.append(f"{len(bad)} of {len(ids)} re-embedded photos differ from their stored vectors "
                        f"(cosine < {threshold}): {_examples(bad)}")
