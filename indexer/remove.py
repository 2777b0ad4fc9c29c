"""`indexer remove`: publish a version of an index without some items, re-encoding nothing.

The kept vectors are read back from the live store and written to the next version's (for FAISS an
emptied copy of the index with the same trained quantiser, for Milvus a new collection), in their
old order, so the kept photos are numbered 0..n-1 in the store and in the metadata alike.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .change import change_index
from .history import MAX_LISTED, revised_manifest
from .metadata_edit import count_rows, delete_items, duplicate_groups, existing_items, kept_vector_ids
from .errors import IndexUpdateError
from .stores import StoreConfig


@dataclass
class RemoveResult:
    version: Path
    removed_items: list[str]
    unknown_items: list[str]  # asked for but not in the index
    removed_vectors: int
    vectors: int  # totals of the live version afterwards
    items: int


def read_item_ids_file(path: Path) -> list[str]:
    """One item id per line; blank lines and lines starting with `#` are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise IndexUpdateError(f"cannot read the item id list {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise IndexUpdateError(f"item id list {path} is not UTF-8 text ({exc.reason})") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def remove_items(index_dir: Path, item_ids: Sequence[str], store: StoreConfig | None = None) -> RemoveResult:
    """Remove the items (all their photos) from the index; unknown ids are reported, not fatal,
    unless none of the ids is in the index."""
    started = time.perf_counter()
    wanted = list(dict.fromkeys(i.strip() for i in item_ids if i.strip()))
    if not wanted:
        raise IndexUpdateError("no item ids given")
    with change_index(index_dir, store) as change:
        present = existing_items(change.metadata, wanted)
        found = [i for i in wanted if i in present]
        unknown = [i for i in wanted if i not in present]
        _refuse_unless_some_remain(index_dir, found, unknown, total_items=count_rows(change.metadata)[1])
        rebuilt = change.stage_store(kept_vector_ids(change.metadata, found))
        removed_vectors = delete_items(change.metadata, found)
        vectors, items = count_rows(change.metadata)
        if vectors != rebuilt.count():
            raise IndexUpdateError(f"internal error: {vectors} metadata rows but {rebuilt.count()} vectors "
                                   f"after removing; nothing was published")
        manifest = revised_manifest(
            change.live.manifest, operation="remove", vectors=vectors, items=items,
            duplicate_groups=duplicate_groups(change.metadata),
            details={"removed_vectors": removed_vectors, "removed_items": len(found),
                     "removed_item_ids": found[:MAX_LISTED], "unknown_item_ids": len(unknown),
                     "timings": {"total_s": round(time.perf_counter() - started, 3)}})
        version = change.publish(rebuilt, manifest, compact_metadata=True)
    return RemoveResult(version=version, removed_items=found, unknown_items=unknown,
                        removed_vectors=removed_vectors, vectors=vectors, items=items)


def _refuse_unless_some_remain(index_dir: Path, found: list[str], unknown: list[str], total_items: int) -> None:
    if not found:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise IndexUpdateError(f"none of the {len(unknown)} item ids is in {index_dir} ({shown}); nothing removed")
    if len(found) == total_items:
        # A service on an empty index would answer every search with nothing, without any error;
        # `build` refuses an empty catalogue for the same reason. Replacing everything is a build.
        raise IndexUpdateError(f"removing all {total_items} items would leave {index_dir} empty, which cannot "
                               f"be served; build a new index for the new catalogue instead")
