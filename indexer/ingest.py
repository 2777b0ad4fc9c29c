"""Shared by `build` and `add`: which photos a catalogue names, and what became of encoding them."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from model.catalog import CatalogEntry, entries_from_csv, entries_from_folder
from model.preprocessing import IMAGE_SUFFIXES

from .errors import IndexBuildError

if TYPE_CHECKING:  # the encoder imports torch; this module is also used before any encoding
    from .encode import EncodeResult

_SUFFIXES_SHOWN = ", ".join(IMAGE_SUFFIXES)  # the one list the reader accepts


def read_entries(images: Path | None, catalog: Path | None) -> list[CatalogEntry]:
    """The catalogue's photos: a CSV (paths relative to `images` or the CSV), else a folder tree."""
    if catalog:
        entries = entries_from_csv(catalog, images)
    elif images:
        entries = entries_from_folder(images)
    else:
        raise IndexBuildError("give --images DIR, --catalog CSV, or both")
    if not entries:
        raise IndexBuildError(f"no photos found ({_SUFFIXES_SHOWN}) in {catalog or images}")
    return entries


def skipped_photos(entries: list[CatalogEntry], encoded: EncodeResult) -> list[dict]:
    """The photos that could not be decoded, with the reason, as the manifest records them."""
    return [{"path": str(entries[i].path), "reason": reason} for i, reason in encoded.failures]


def require_some_usable(found: int, usable: int, skipped: list[dict]) -> None:
    """Every photo failing usually means a wrong folder or format, which must not pass as success."""
    if usable == 0:
        raise IndexBuildError(
            f"none of the {found} photos could be encoded; first errors: "
            + "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
        )
