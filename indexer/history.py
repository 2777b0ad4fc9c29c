"""The manifest of a changed index: current counts, and a `history` of the changes since the build.

Fields the service reads (model, dim, preprocessing, counts.vectors/items, built_at, ...) keep their
meaning, so `format_version` stays; `built_at`, `timings`, `skipped` and `counts.photos_found` /
`counts.skipped` keep describing the original build, and each change is described by its entry.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from . import __version__
from .manifest import Manifest

MAX_LISTED = 100  # photos or ids listed per history entry; the counts are always complete


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def revised_manifest(manifest: Manifest, *, operation: str, vectors: int, items: int,
                     duplicate_groups: list[list[str]], details: dict) -> Manifest:
    """A copy of `manifest` with the new counts and one more history entry for `operation`."""
    at = now_iso()
    entry = {"operation": operation, "at": at, "snap2shop_version": __version__,
             "added_vectors": 0, "added_items": 0, "removed_vectors": 0, "removed_items": 0, "skipped": 0,
             "vectors": vectors, "items": items} | details
    counts = dataclasses.replace(manifest.counts, vectors=vectors, items=items,
                                 duplicate_photo_groups=len(duplicate_groups))
    return manifest.replace(updated_at=at, counts=counts, duplicate_photo_groups=duplicate_groups[:1000],
                            history=[*manifest.history, entry])
