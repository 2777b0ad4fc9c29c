"""Reader stage: which photos make up the catalogue, and which item each one shows.

In model/ because both the indexer and training (model/training/data.py, catalog format) read catalogues."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from .preprocessing import IMAGE_SUFFIXES


class CatalogError(ValueError):
    """The catalogue description is unusable (missing folder, malformed CSV)."""


@dataclass(frozen=True)
class CatalogEntry:
    path: Path  # absolute
    item_id: str
    attributes: dict[str, str] = field(default_factory=dict)
    line: int | None = field(default=None, compare=False)  # its CSV row's physical line, for messages


def discover_images(root: str | Path) -> list[Path]:
    """Every photo under `root`, recursively, suffix in any letter case, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise CatalogError(f"image folder {root} does not exist or is not a folder")
    found = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # Symlinked folders are followed (catalogues are often assembled from links), but each
        # real folder only once, so a link loop or a second link to the same folder adds nothing.
        stat = os.stat(dirpath)
        if (stat.st_dev, stat.st_ino) in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add((stat.st_dev, stat.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / name for name in sorted(filenames)
                     if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."))
    return found


def entries_from_folder(root: str | Path) -> list[CatalogEntry]:
    """Item id = file stem, so `shop/12345.jpg` and `detail/12345.png` are two photos of item 12345."""
    return [CatalogEntry(path=p.resolve(), item_id=p.stem) for p in discover_images(root)]


def entries_from_csv(csv_path: str | Path, images_root: str | Path | None = None) -> list[CatalogEntry]:
    """Rows `path,item_id[,category,title,...]`; extra columns become item attributes.

    Relative paths are resolved against `images_root` when given, else against the CSV's folder.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CatalogError(f"catalogue CSV {csv_path} does not exist")
    base = Path(images_root) if images_root else csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if "path" not in columns or "item_id" not in columns:
                raise CatalogError(
                    f"{csv_path}: the header must name 'path' and 'item_id' columns, found {columns}"
                )
            entries = []
            for row in reader:
                line_no = reader.line_num  # physical line, right even after blank or multi-line rows
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
                if not row.get("path") or not row.get("item_id"):
                    raise CatalogError(f"{csv_path}:{line_no}: empty path or item_id")
                path = Path(row.pop("path"))
                item_id = row.pop("item_id")
                entries.append(CatalogEntry(path=(base / path).resolve(), item_id=item_id,
                                            attributes={k: v for k, v in row.items() if k}, line=line_no))
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{csv_path}:{_first_non_utf8_line(csv_path)}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise CatalogError(f"{csv_path} is not a valid CSV: {exc}") from None
    return entries


def _first_non_utf8_line(path: Path) -> int | str:
    with path.open("rb") as handle:
        for line_no, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return line_no
    return "?"


def image_root_for(images: str | Path | None, catalog: str | Path | None) -> Path:
    return Path(images).resolve() if images else Path(catalog).resolve().parent


def relative_to_root(path: Path, root: Path) -> str:
    """Store paths relative to the catalogue root so a moved catalogue can be re-pointed."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
