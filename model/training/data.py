"""Cross-domain retrieval data: shoppers' photos ("consumer") and catalogue photos ("shop") of items.

Three on-disk formats are read into one in-memory description, `RetrievalData`:

* ``deepfashion``: the DeepFashion "Consumer-to-shop Clothes Retrieval" benchmark as distributed
  (``img/<CATEGORY>/<Sub_Category>/id_XXXXXXXX/{comsumer,shop}_NN.jpg``,
  ``Eval/list_eval_partition.txt``, optional ``Anno/list_bbox_consumer2shop.txt``).
* ``pairs``: a CSV ``consumer_path,shop_path,item_id[,category][,split]``.
* ``catalog``: the indexer's catalogue (a folder or ``path,item_id[,category,...]`` CSV), shop
  photos only; the training code synthesises the consumer side.

Splits are "train", "val", "test", plus "unlisted": when a split CSV is given, items it does not
mention get split "unlisted". They are kept (so a gallery can still contain them) but are never
"train", because an item nobody assigned may well be someone's held-out test item, and guessing
"train" would leak it into training.

Every problem with the files raises `DataFormatError` naming the file and line: a training run
that silently drops photos trains on a different dataset than the one asked for.
"""
from __future__ import annotations

import csv
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..catalog import CatalogError, entries_from_csv, entries_from_folder

log = logging.getLogger(__name__)

DOMAINS = ("consumer", "shop")
SPLITS = ("train", "val", "test")
UNLISTED = "unlisted"
ALL_SPLITS = SPLITS + (UNLISTED,)
FORMATS = ("deepfashion", "pairs", "catalog")

DEEPFASHION_PARTITION = Path("Eval") / "list_eval_partition.txt"
DEEPFASHION_BBOX = Path("Anno") / "list_bbox_consumer2shop.txt"
_PARTITION_HEADER = ["image_pair_name_1", "image_pair_name_2", "item_id", "evaluation_status"]
_BBOX_HEADER = ["image_name", "clothes_type", "source_type", "x_1", "y_1", "x_2", "y_2"]
_BBOX_SOURCE = {"1": "shop", "2": "consumer"}
# The dataset spells its consumer photos "comsumer_NN.jpg"; a corrected copy may say "consumer_".
_CONSUMER_PREFIXES = ("comsumer_", "consumer_")
_SHOP_PREFIX = "shop_"


class DataFormatError(ValueError):
    """The dataset files are unusable; the message names the file and line at fault."""


@dataclass(frozen=True)
class Photo:
    """One photo of one item, in one domain and one split."""
    path: Path  # absolute
    item_id: str
    domain: str  # "consumer" or "shop"
    split: str  # "train", "val", "test" or "unlisted"
    category: str = ""  # "CLOTHING/Blouse" for DeepFashion (the two folder levels), a CSV column otherwise
    bbox: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 (x1, y1 exclusive, as PIL's crop) or None

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.split not in ALL_SPLITS:
            raise ValueError(f"split must be one of {ALL_SPLITS}, got {self.split!r}")


@dataclass
class RetrievalData:
    """The photos of a retrieval dataset, in the order the source files list them."""
    photos: list[Photo]

    def split(self, name: str) -> RetrievalData:
        """The photos of split `name` only."""
        # A typo such as "valid" would otherwise yield an empty set and a meaningless score.
        if name not in ALL_SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {ALL_SPLITS}")
        return RetrievalData([p for p in self.photos if p.split == name])

    def consumer(self) -> list[Photo]:
        """Shoppers' photos (the queries)."""
        return [p for p in self.photos if p.domain == "consumer"]

    def shop(self) -> list[Photo]:
        """Catalogue photos (the gallery)."""
        return [p for p in self.photos if p.domain == "shop"]

    def items(self) -> list[str]:
        """Sorted distinct item ids."""
        return sorted({p.item_id for p in self.photos})

    def shop_by_item(self) -> dict[str, list[Photo]]:
        """Item id -> its shop photos, items sorted; items without shop photos are absent."""
        return _by_item(self.shop())

    def consumer_by_item(self) -> dict[str, list[Photo]]:
        """Item id -> its consumer photos, items sorted; items without consumer photos are absent."""
        return _by_item(self.consumer())

    def summary(self) -> dict:
        """JSON-ready counts: photos and items per split and domain, items per category, boxes."""
        splits: dict[str, dict[str, int]] = {}
        for name in ALL_SPLITS:
            part = [p for p in self.photos if p.split == name]
            if part:
                splits[name] = {"consumer": sum(p.domain == "consumer" for p in part),
                                "shop": sum(p.domain == "shop" for p in part),
                                "items": len({p.item_id for p in part})}
        item_category = {(p.item_id, p.category) for p in self.photos}
        return {
            "photos": len(self.photos),
            "consumer": sum(p.domain == "consumer" for p in self.photos),
            "shop": sum(p.domain == "shop" for p in self.photos),
            "items": len({p.item_id for p in self.photos}),
            "with_bbox": sum(p.bbox is not None for p in self.photos),
            "splits": splits,
            "categories": dict(sorted(Counter(c for _, c in item_category).items())),
        }


def _by_item(photos: list[Photo]) -> dict[str, list[Photo]]:
    grouped: dict[str, list[Photo]] = defaultdict(list)
    for photo in photos:
        grouped[photo.item_id].append(photo)
    return dict(sorted(grouped.items()))


class _PhotoSet:
    """Collects photos, merging repeats of one path and refusing contradictory ones.

    The same photo is listed once per pair it belongs to; all listings must agree on its item,
    domain, split and category, since a photo that is both "train" and "test" leaks across splits.
    """

    def __init__(self) -> None:
        self.photos: dict[Path, Photo] = {}
        self.first_seen: dict[Path, str] = {}

    def add(self, photo: Photo, where: str) -> None:
        known = self.photos.get(photo.path)
        if known is None:
            self.photos[photo.path] = photo
            self.first_seen[photo.path] = where
            return
        for field in ("item_id", "domain", "split", "category"):
            if getattr(known, field) != getattr(photo, field):
                raise DataFormatError(
                    f"{where}: {photo.path} listed with {field} {getattr(photo, field)!r}, but "
                    f"{self.first_seen[photo.path]} lists it with {getattr(known, field)!r}")

    def check_files_exist(self) -> None:
        for path, where in self.first_seen.items():
            if not path.is_file():
                raise DataFormatError(f"{where}: photo {path} does not exist")

    def result(self) -> RetrievalData:
        return RetrievalData(list(self.photos.values()))


# --- DeepFashion Consumer-to-shop ---------------------------------------------------------------

def read_deepfashion(root: Path, crop: bool = True) -> RetrievalData:
    """Read the DeepFashion Consumer-to-shop benchmark under `root`.

    Each partition row pairs a consumer photo (first column) with a shop photo (second column);
    photos shared by several pairs appear once. With `crop`, garment boxes from
    ``Anno/list_bbox_consumer2shop.txt`` (when present) are attached; without it, bbox is None.
    """
    root = Path(os.path.abspath(root))
    partition = root / DEEPFASHION_PARTITION
    if not partition.is_file():
        raise DataFormatError(f"{partition}: DeepFashion partition file not found "
                              f"(expected ROOT/{DEEPFASHION_PARTITION.as_posix()})")
    photos = _PhotoSet()
    for line_no, tokens in _listing_rows(partition, _PARTITION_HEADER):
        where = f"{partition}:{line_no}"
        if len(tokens) != 4:
            raise DataFormatError(f"{where}: expected 4 fields (consumer photo, shop photo, item id, "
                                  f"status), found {len(tokens)}")
        consumer_rel, shop_rel, item_id, status = tokens
        if status not in SPLITS:
            raise DataFormatError(f"{where}: evaluation_status must be one of {SPLITS}, got {status!r}")
        for rel, domain in ((consumer_rel, "consumer"), (shop_rel, "shop")):
            category = _deepfashion_category(rel, domain, where)
            photos.add(Photo(root / rel, item_id, domain, status, category), where)
    photos.check_files_exist()
    if not photos.photos:
        raise DataFormatError(f"{partition}:2: no pairs listed")
    data = photos.result()
    bbox_file = root / DEEPFASHION_BBOX
    if crop and bbox_file.is_file():
        data = _attach_boxes(data, root, bbox_file)
    elif crop:
        log.warning("%s not found: DeepFashion photos will be used uncropped", bbox_file)
    return data


def _listing_rows(path: Path, header: list[str]):
    """(line number, tokens) of a DeepFashion list file: a row-count line, a header, then rows."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not lines or not lines[0].strip().isdigit():
        raise DataFormatError(f"{path}:1: expected the number of rows, found "
                              f"{(lines[0] if lines else '')!r}")
    if len(lines) < 2 or lines[1].split() != header:
        raise DataFormatError(f"{path}:2: expected the header {' '.join(header)!r}, found "
                              f"{(lines[1] if len(lines) > 1 else '')!r}")
    rows = [(no, line.split()) for no, line in enumerate(lines[2:], start=3) if line.strip()]
    # The count line is informational; a truncated or hand-edited copy should still load, but say so.
    if int(lines[0]) != len(rows):
        log.warning("%s:1 announces %s rows, found %d", path, lines[0].strip(), len(rows))
    return rows


def _deepfashion_category(rel: str, domain: str, where: str) -> str:
    parts = PurePosixPath(rel).parts
    if len(parts) != 5 or parts[0] != "img":
        raise DataFormatError(f"{where}: {rel!r} is not img/<CATEGORY>/<Sub_Category>/<item>/<photo>")
    name = parts[-1]
    # Columns swapped by a conversion script would turn every query into a gallery photo.
    if domain == "consumer" and name.startswith(_SHOP_PREFIX) or \
            domain == "shop" and name.startswith(_CONSUMER_PREFIXES):
        raise DataFormatError(f"{where}: {rel!r} is in the {domain} column but its name says otherwise")
    return f"{parts[1]}/{parts[2]}"


def _attach_boxes(data: RetrievalData, root: Path, bbox_file: Path) -> RetrievalData:
    by_path = {p.path: p for p in data.photos}
    boxes: dict[Path, tuple[int, int, int, int]] = {}
    box_line: dict[Path, int] = {}
    degenerate: set[Path] = set()
    for line_no, tokens in _listing_rows(bbox_file, _BBOX_HEADER):
        where = f"{bbox_file}:{line_no}"
        if len(tokens) != 7:
            raise DataFormatError(f"{where}: expected 7 fields ({' '.join(_BBOX_HEADER)}), found {len(tokens)}")
        try:
            x0, y0, x1, y1 = (int(t) for t in tokens[3:])
        except ValueError:
            raise DataFormatError(f"{where}: box coordinates must be integers, got {tokens[3:]}") from None
        if tokens[2] not in _BBOX_SOURCE:
            raise DataFormatError(f"{where}: source_type must be 1 (shop) or 2 (consumer), got {tokens[2]!r}")
        photo = by_path.get(root / tokens[0])
        if photo is None:
            continue  # boxes of photos outside the evaluation pairs are of no use here
        if _BBOX_SOURCE[tokens[2]] != photo.domain:
            raise DataFormatError(f"{where}: source_type {tokens[2]} ({_BBOX_SOURCE[tokens[2]]}) but the "
                                  f"partition lists {tokens[0]} as a {photo.domain} photo")
        box = (x0, y0, x1, y1)
        if photo.path in box_line and boxes.get(photo.path) != box:
            raise DataFormatError(f"{where}: a second, different box for {tokens[0]} "
                                  f"(first on line {box_line[photo.path]})")
        box_line.setdefault(photo.path, line_no)
        if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
            # An empty box cannot be cropped to, but the photo itself is still good: use it whole.
            degenerate.add(photo.path)
            continue
        boxes[photo.path] = box
    if degenerate:
        log.warning("%s: %d empty or negative boxes ignored; those photos stay uncropped",
                    bbox_file, len(degenerate))
    missing = len(by_path) - len(box_line)
    if missing:
        log.warning("%s: %d listed photos have no box; they stay uncropped", bbox_file, missing)
    return RetrievalData([_with_box(p, boxes.get(p.path)) for p in data.photos])


def _with_box(photo: Photo, box: tuple[int, int, int, int] | None) -> Photo:
    if box is None:
        return photo
    return Photo(photo.path, photo.item_id, photo.domain, photo.split, photo.category, box)


# --- CSV formats --------------------------------------------------------------------------------

def read_split_csv(split_csv: Path) -> dict[str, str]:
    """Item id -> split from a CSV with ``item_id`` and ``split`` columns (``path`` is ignored)."""
    split_csv = Path(split_csv)
    mapping: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line_no, row in _csv_rows(split_csv, ("item_id", "split")):
        item_id, split = row["item_id"], row["split"]
        if not item_id or split not in SPLITS:
            raise DataFormatError(f"{split_csv}:{line_no}: need an item_id and a split in {SPLITS}, "
                                  f"got {item_id!r}, {split!r}")
        if mapping.setdefault(item_id, split) != split:
            raise DataFormatError(f"{split_csv}:{line_no}: item {item_id!r} is {split!r} here but "
                                  f"{mapping[item_id]!r} on line {first_line[item_id]}")
        first_line.setdefault(item_id, line_no)
    return mapping


def _csv_rows(path: Path, required: tuple[str, ...]):
    """(physical line number, stripped row dict) for each data row of a headed CSV."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [(c or "").strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataFormatError(f"{path}:1: the header must name the columns {list(required)}; "
                                      f"missing {missing}, found {columns}")
            rows = []
            for row in reader:
                rows.append((reader.line_num, {(k or "").strip(): (v or "").strip()
                                               for k, v in row.items() if k is not None}))
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DataFormatError(f"{path}:{reader.line_num}: not a valid CSV: {exc}") from None
    return rows


def _split_for(item_id: str, split_map: dict[str, str] | None) -> str:
    if split_map is None:
        return "train"
    return split_map.get(item_id, UNLISTED)


def read_pairs_csv(csv_path: Path, split_csv: Path | None = None) -> RetrievalData:
    """Read ``consumer_path,shop_path,item_id[,category][,split]`` rows; paths relative to the CSV.

    The split comes from the ``split`` column if there is one, else from `split_csv`'s item ids
    (unlisted items: "unlisted"), else every photo is "train".
    """
    csv_path = Path(os.path.abspath(csv_path))
    rows = _csv_rows(csv_path, ("consumer_path", "shop_path", "item_id"))
    has_split = bool(rows) and "split" in rows[0][1]
    if has_split and split_csv is not None:
        log.warning("%s has a split column; %s is ignored", csv_path, split_csv)
    split_map = read_split_csv(split_csv) if split_csv is not None and not has_split else None
    photos = _PhotoSet()
    for line_no, row in rows:
        where = f"{csv_path}:{line_no}"
        item_id = row["item_id"]
        if not (row["consumer_path"] and row["shop_path"] and item_id):
            raise DataFormatError(f"{where}: empty consumer_path, shop_path or item_id")
        if has_split:
            split = row.get("split", "")
            if split not in SPLITS:
                raise DataFormatError(f"{where}: split must be one of {SPLITS}, got {split!r}")
        else:
            split = _split_for(item_id, split_map)
        for column, domain in (("consumer_path", "consumer"), ("shop_path", "shop")):
            path = Path(os.path.abspath(csv_path.parent / row[column]))  # an absolute path stays itself
            photos.add(Photo(path, item_id, domain, split, row.get("category", "")), where)
    photos.check_files_exist()
    if not photos.photos:
        raise DataFormatError(f"{csv_path}:2: no pairs listed")
    return photos.result()


def read_catalog(source: Path, split_csv: Path | None = None, images_root: Path | None = None) -> RetrievalData:
    """Shop photos of the indexer's catalogue: a folder (item id = file stem) or its CSV.

    Split from `split_csv` by item id (items it does not list: "unlisted"), else "train".
    There are no consumer photos; training synthesises them from the shop photos.
    """
    source = Path(source)
    split_map = read_split_csv(split_csv) if split_csv is not None else None
    is_folder = source.is_dir()
    try:
        entries = entries_from_folder(source) if is_folder else entries_from_csv(source, images_root)
    except CatalogError as exc:
        raise DataFormatError(str(exc)) from exc  # callers catch one error type for all formats
    photos = _PhotoSet()
    for entry in entries:
        where = f"{source}:{entry.line}" if entry.line is not None else str(source)
        photos.add(Photo(Path(entry.path), entry.item_id, "shop", _split_for(entry.item_id, split_map),
                         entry.attributes.get("category", "")), where)
    if not is_folder:
        photos.check_files_exist()
    if not photos.photos:
        raise DataFormatError(f"{source}: the catalogue lists no photos")
    return photos.result()


def read_data(fmt: str, path: Path, split_csv: Path | None = None, crop: bool = True) -> RetrievalData:
    """Dispatch on `fmt`: "deepfashion" (root folder), "pairs" (CSV) or "catalog" (folder or CSV).

    `crop` only affects DeepFashion (the only format with boxes); `split_csv` is refused for it
    because the benchmark's own partition defines the splits.
    """
    if fmt == "deepfashion":
        if split_csv is not None:
            raise ValueError("DeepFashion defines its own splits (Eval/list_eval_partition.txt); "
                             "a split CSV cannot be combined with it")
        return read_deepfashion(Path(path), crop=crop)
    if fmt == "pairs":
        return read_pairs_csv(Path(path), split_csv)
    if fmt == "catalog":
        return read_catalog(Path(path), split_csv)
    raise ValueError(f"unknown data format {fmt!r}; expected one of {FORMATS}")
