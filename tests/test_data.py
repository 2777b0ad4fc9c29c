"""Dataset readers (model/training/data.py): DeepFashion Consumer-to-shop, pairs CSV, indexer catalogue."""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from model.training.data import DataFormatError, Photo, RetrievalData, read_catalog, read_data, read_deepfashion, read_pairs_csv

from .deepfashion_tree import write_deepfashion_tree

PARTITION = Path("Eval") / "list_eval_partition.txt"
BBOX = Path("Anno") / "list_bbox_consumer2shop.txt"
BLOUSE, PANTS = "CLOTHING/Blouse", "TROUSERS/Pants"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """8 items (4 train, 1 val, 3 test), 2 shop x 2 consumer photos each, with boxes."""
    return write_deepfashion_tree(tmp_path_factory.mktemp("deepfashion"))


@pytest.fixture
def tree_copy(tree, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(tree, tmp_path / "df"))


def _ids(*numbers: int) -> list[str]:
    return [f"id_{n:08d}" for n in numbers]


def _edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- DeepFashion --------------------------------------------------------------------------------

def test_deepfashion_tree_reads_back_with_counts_per_split_domain_and_item(tree):
    data = read_deepfashion(tree)

    # 8 items x (2 consumer + 2 shop); the 32 partition rows list each photo twice.
    assert len(data.photos) == 32
    assert len({p.path for p in data.photos}) == 32
    assert data.items() == _ids(*range(1, 9))
    assert data.split("train").items() == _ids(1, 2, 3, 4)
    assert data.split("val").items() == _ids(5)
    assert data.split("test").items() == _ids(6, 7, 8)
    assert data.split("unlisted").photos == []
    for split, n_items in (("train", 4), ("val", 1), ("test", 3)):
        part = data.split(split)
        assert len(part.consumer()) == len(part.shop()) == 2 * n_items
    assert data.summary() == {
        "photos": 32, "consumer": 16, "shop": 16, "items": 8, "with_bbox": 32,
        "splits": {"train": {"consumer": 8, "shop": 8, "items": 4},
                   "val": {"consumer": 2, "shop": 2, "items": 1},
                   "test": {"consumer": 6, "shop": 6, "items": 3}},
        "categories": {BLOUSE: 4, PANTS: 4},
    }


def test_deepfashion_photos_carry_item_domain_and_category_from_the_path(tree):
    data = read_deepfashion(tree)

    shops, consumers = data.shop_by_item(), data.consumer_by_item()
    assert list(shops) == list(consumers) == data.items()
    first = shops["id_00000001"]
    assert [p.path.name for p in first] == ["shop_01.jpg", "shop_02.jpg"]
    assert [p.path.name for p in consumers["id_00000002"]] == ["comsumer_01.jpg", "comsumer_02.jpg"]
    for photo in data.photos:
        assert photo.path.is_absolute() and photo.path.is_file()
        assert photo.path.parent.name == photo.item_id
        assert photo.category == (BLOUSE if int(photo.item_id[3:]) % 2 else PANTS)
        assert photo.path.name.startswith("shop_" if photo.domain == "shop" else "comsumer_")


def test_boxes_are_attached_only_with_crop_and_lie_inside_the_photo(tree):
    cropped, whole = read_deepfashion(tree, crop=True), read_deepfashion(tree, crop=False)

    assert [p.path for p in cropped.photos] == [p.path for p in whole.photos]
    assert all(p.bbox is None for p in whole.photos)
    for photo in cropped.photos:
        x0, y0, x1, y1 = photo.bbox
        with Image.open(photo.path) as img:
            width, height = img.size
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        if photo.domain == "consumer":
            # The garment sits inside a larger cluttered frame, so the box is a real crop.
            assert (x1 - x0) * (y1 - y0) < 0.5 * width * height


def test_missing_bbox_file_leaves_photos_uncropped(tmp_path, caplog):
    root = write_deepfashion_tree(tmp_path / "df", n_items=2, splits=("train", "test"), with_bbox=False, size=48)

    with caplog.at_level(logging.WARNING, logger="model.training.data"):
        data = read_deepfashion(root, crop=True)
    assert data.summary()["with_bbox"] == 0
    assert "list_bbox_consumer2shop.txt" in caplog.text


def test_count_line_disagreeing_with_the_rows_is_only_a_warning(tree_copy, caplog):
    def drop_last_row(lines):
        del lines[-1]  # comsumer_02 x shop_02 of item 8: both photos stay listed by other rows
    _edit_lines(tree_copy / PARTITION, drop_last_row)

    with caplog.at_level(logging.WARNING, logger="model.training.data"):
        data = read_deepfashion(tree_copy)
    assert len(data.photos) == 32
    assert "announces 32 rows, found 31" in caplog.text


def _row_line(path: Path, needle: str) -> int:
    return next(no for no, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_missing_photo_is_an_error_naming_the_partition_line(tree_copy):
    (tree_copy / "img" / "TROUSERS" / "Pants" / "id_00000004" / "shop_02.jpg").unlink()
    partition = tree_copy / PARTITION
    line = _row_line(partition, "id_00000004/shop_02.jpg")

    with pytest.raises(DataFormatError, match=rf"list_eval_partition\.txt:{line}: photo .*shop_02\.jpg does not exist"):
        read_deepfashion(tree_copy)


@pytest.mark.parametrize("edit, pattern", [
    (lambda lines: lines.__setitem__(5, " ".join(lines[5].split()[:3])), r":6: expected 4 fields"),
    (lambda lines: lines.__setitem__(4, lines[4].replace(" train", " training")), r":5: evaluation_status"),
    (lambda lines: lines.__setitem__(1, "image_pair_name_1 image_pair_name_2 item_id"), r":2: expected the header"),
    (lambda lines: lines.__setitem__(0, "many"), r":1: expected the number of rows"),
    (lambda lines: lines.__setitem__(3, lines[3].replace("img/CLOTHING/Blouse/", "img/Blouse/")),
     r":4: .* is not img/<CATEGORY>/<Sub_Category>"),
    # Consumer and shop columns swapped.
    (lambda lines: lines.__setitem__(2, " ".join([lines[2].split()[i] for i in (1, 0, 2, 3)])),
     r":3: .*shop_01\.jpg' is in the consumer column"),
    # The same photo in two splits would leak across them.
    (lambda lines: lines.__setitem__(3, lines[3].replace(" train", " test")), r":4: .* split 'test', but .*:3 lists"),
])
def test_malformed_partition_is_an_error_naming_file_and_line(tree_copy, edit, pattern):
    _edit_lines(tree_copy / PARTITION, edit)

    with pytest.raises(DataFormatError, match=r"list_eval_partition\.txt" + pattern):
        read_deepfashion(tree_copy)


@pytest.mark.parametrize("edit, pattern", [
    (lambda lines: lines.__setitem__(2, lines[2].rsplit(" ", 1)[0] + " x"), r":3: box coordinates must be integers"),
    (lambda lines: lines.__setitem__(3, lines[3].rsplit(" ", 1)[0]), r":4: expected 7 fields"),
    (lambda lines: lines.__setitem__(1, "image_name x_1 y_1 x_2 y_2"), r":2: expected the header"),
    # shop_01 of item 1 declared a consumer photo (source_type 2).
    (lambda lines: lines.__setitem__(2, lines[2].replace(" 1 1 ", " 1 2 ", 1)), r":3: source_type 2 \(consumer\)"),
])
def test_malformed_bbox_file_is_an_error_naming_file_and_line(tree_copy, edit, pattern):
    _edit_lines(tree_copy / BBOX, edit)

    with pytest.raises(DataFormatError, match=r"list_bbox_consumer2shop\.txt" + pattern):
        read_deepfashion(tree_copy, crop=True)
    read_deepfashion(tree_copy, crop=False)  # without cropping the box file is not read at all


def test_empty_box_leaves_that_photo_uncropped(tree_copy, caplog):
    def flatten(lines):
        name, kind, source, x0, y0, _, _ = lines[2].split()
        lines[2] = f"{name} {kind} {source} {x0} {y0} {x0} {y0}"
    _edit_lines(tree_copy / BBOX, flatten)

    with caplog.at_level(logging.WARNING, logger="model.training.data"):
        data = read_deepfashion(tree_copy)
    assert data.summary()["with_bbox"] == 31
    assert data.shop_by_item()["id_00000001"][0].bbox is None
    assert "1 empty or negative boxes ignored" in caplog.text


def test_missing_partition_file_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match="list_eval_partition.txt"):
        read_deepfashion(tmp_path)


# --- pairs CSV ----------------------------------------------------------------------------------

@pytest.fixture
def pairs_rows(tree) -> list[list[str]]:
    """consumer_path, shop_path, item_id, category rows for items 1-3, every consumer x shop pair."""
    rows = []
    for item in _ids(1, 2, 3):
        folder = next((tree / "img").glob(f"*/*/{item}"))
        category = "/".join(folder.parts[-3:-1])
        for consumer in sorted(folder.glob("comsumer_*.jpg")):
            for shop in sorted(folder.glob("shop_*.jpg")):
                rows.append([consumer.relative_to(tree).as_posix(), shop.relative_to(tree).as_posix(), item, category])
    return rows


def test_pairs_csv_without_split_is_all_train_and_deduplicated(tree, pairs_rows):
    pairs_rows[0][1] = str(tree / pairs_rows[0][1])  # absolute paths are taken as they are
    csv_path = _write_csv(tree / "pairs_nosplit.csv", ["consumer_path", "shop_path", "item_id", "category"], pairs_rows)

    data = read_pairs_csv(csv_path)
    assert len(data.photos) == 12  # 12 rows, 12 distinct photos
    assert data.items() == _ids(1, 2, 3)
    assert {p.split for p in data.photos} == {"train"}
    assert data.summary()["categories"] == {BLOUSE: 2, PANTS: 1}
    assert all(len(v) == 2 for v in data.shop_by_item().values())
    assert all(len(v) == 2 for v in data.consumer_by_item().values())
    assert all(p.path.is_absolute() and p.bbox is None for p in data.photos)


def test_pairs_csv_split_column_wins_over_split_csv(tree, pairs_rows, tmp_path):
    splits = {"id_00000001": "train", "id_00000002": "val", "id_00000003": "test"}
    rows = [row[:3] + [splits[row[2]]] for row in pairs_rows]  # no category column this time
    csv_path = _write_csv(tree / "pairs_split.csv", ["consumer_path", "shop_path", "item_id", "split"], rows)
    split_csv = _write_csv(tmp_path / "split.csv", ["path", "item_id", "split"], [["x.jpg", "id_00000001", "test"]])

    for data in (read_pairs_csv(csv_path), read_pairs_csv(csv_path, split_csv=split_csv)):
        assert {p.item_id: p.split for p in data.photos} == splits
        assert {p.category for p in data.photos} == {""}


def test_pairs_csv_split_from_split_csv_and_unlisted_items(tree, pairs_rows, tmp_path):
    header = ["consumer_path", "shop_path", "item_id", "category"]
    csv_path = _write_csv(tree / "pairs_nosplit2.csv", header, pairs_rows)
    split_csv = _write_csv(tmp_path / "split.csv", ["path", "item_id", "split"],
                           [["a.jpg", "id_00000001", "train"], ["b.jpg", "id_00000002", "test"],
                            ["c.jpg", "id_00000002", "test"], ["d.jpg", "id_99999999", "val"]])

    data = read_pairs_csv(csv_path, split_csv=split_csv)
    assert {p.item_id: p.split for p in data.photos} == {
        "id_00000001": "train", "id_00000002": "test", "id_00000003": "unlisted"}
    assert data.split("unlisted").items() == _ids(3)
    assert data.split("train").items() == _ids(1)


def test_pairs_csv_errors_name_file_and_line(tree, pairs_rows, tmp_path):
    header = ["consumer_path", "shop_path", "item_id", "category"]
    bad_header = _write_csv(tmp_path / "h.csv", ["consumer", "shop_path", "item_id"], [])
    with pytest.raises(DataFormatError, match=r"h\.csv:1: the header must name"):
        read_pairs_csv(bad_header)

    pairs_rows[4][0] = "img/nowhere/comsumer_09.jpg"
    missing = _write_csv(tree / "pairs_missing.csv", header, pairs_rows)
    with pytest.raises(DataFormatError, match=r"pairs_missing\.csv:6: photo .*comsumer_09\.jpg does not exist"):
        read_pairs_csv(missing)

    bad_split = _write_csv(tree / "pairs_bad_split.csv", header[:3] + ["split"], [pairs_rows[0][:3] + ["dev"]])
    with pytest.raises(DataFormatError, match=r"pairs_bad_split\.csv:2: split must be one of"):
        read_pairs_csv(bad_split)

    conflicting = _write_csv(tree / "pairs_conflict.csv", header, [pairs_rows[0], pairs_rows[1][:2] + ["id_x", ""]])
    with pytest.raises(DataFormatError, match=r"pairs_conflict\.csv:3: .* item_id 'id_x'"):
        read_pairs_csv(conflicting)

    split_csv = _write_csv(tmp_path / "split_conflict.csv", ["item_id", "split"],
                           [["id_00000001", "train"], ["id_00000001", "test"]])
    with pytest.raises(DataFormatError,
                       match=r"split_conflict\.csv:3: item 'id_00000001' is 'test' here but 'train' on line 2"):
        read_pairs_csv(_write_csv(tree / "pairs_ok.csv", header, pairs_rows[:1]), split_csv=split_csv)


# --- catalogue ----------------------------------------------------------------------------------

def test_catalog_from_folder_is_shop_only_train_by_default(tree, tmp_path):
    folder = tmp_path / "shop"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(tree / "img/CLOTHING/Blouse/id_00000001/shop_01.jpg", folder / "A100.jpg")
    shutil.copy(tree / "img/CLOTHING/Blouse/id_00000001/shop_02.jpg", folder / "sub" / "A100.jpg")
    shutil.copy(tree / "img/TROUSERS/Pants/id_00000002/shop_01.jpg", folder / "B200.JPG")

    data = read_catalog(folder)
    assert data.consumer() == []
    assert data.items() == ["A100", "B200"]
    assert [len(v) for v in data.shop_by_item().values()] == [2, 1]
    assert {(p.split, p.category, p.bbox) for p in data.photos} == {("train", "", None)}

    split_csv = _write_csv(tmp_path / "split.csv", ["path", "item_id", "split"], [["A100.jpg", "A100", "test"]])
    data = read_catalog(folder, split_csv=split_csv)
    assert {p.item_id: p.split for p in data.photos} == {"A100": "test", "B200": "unlisted"}


def test_catalog_from_csv_takes_category_and_split_csv(synthetic_catalog, tmp_path):
    split_csv = _write_csv(tmp_path / "split.csv", ["path", "item_id", "split"],
                           [[f"images/sku-{i:04d}_0.jpg", f"sku-{i:04d}", s]
                            for i, s in ((1, "train"), (2, "train"), (3, "val"), (4, "test"))])

    data = read_catalog(synthetic_catalog, split_csv=split_csv)
    assert data.consumer() == [] and len(data.shop()) == 24
    assert data.split("train").items() == ["sku-0001", "sku-0002"]
    assert data.split("val").items() == ["sku-0003"]
    assert data.split("test").items() == ["sku-0004"]
    assert len(data.split("unlisted").items()) == 8  # never guessed to be training data
    with synthetic_catalog.open(newline="") as fh:
        categories = {row["item_id"]: row["category"] for row in csv.DictReader(fh)}
    assert {p.item_id: p.category for p in data.photos} == categories
    assert all(p.path.is_absolute() and p.path.is_file() for p in data.photos)


def test_catalog_csv_errors_name_file_and_line(synthetic_catalog, tmp_path):
    images = synthetic_catalog.parent
    broken = tmp_path / "catalog.csv"
    broken.write_text(f"path,item_id,category\n{images}/images/sku-0001_0.jpg,sku-0001,t-shirt\n\n"
                      f"{images}/images/sku-0099_0.jpg,sku-0099,t-shirt\n")
    with pytest.raises(DataFormatError, match=r"catalog\.csv:4: photo .*sku-0099_0\.jpg does not exist"):
        read_catalog(broken)

    no_item = tmp_path / "no_item.csv"
    no_item.write_text("path,category\nimages/a.jpg,shirt\n")
    with pytest.raises(DataFormatError, match=r"no_item\.csv.*'path' and 'item_id'"):
        read_catalog(no_item)
    with pytest.raises(DataFormatError, match="does not exist"):
        read_catalog(tmp_path / "nothing-here")


# --- dispatch and the data type -----------------------------------------------------------------

def test_read_data_dispatches_on_format(tree, pairs_rows, synthetic_catalog, tmp_path):
    assert read_data("deepfashion", tree) == read_deepfashion(tree)
    assert read_data("deepfashion", tree, crop=False).summary()["with_bbox"] == 0
    csv_path = _write_csv(tree / "pairs_dispatch.csv", ["consumer_path", "shop_path", "item_id"],
                          [r[:3] for r in pairs_rows])
    split_csv = _write_csv(tmp_path / "split.csv", ["item_id", "split"], [["id_00000002", "val"]])
    assert read_data("pairs", csv_path, split_csv=split_csv) == read_pairs_csv(csv_path, split_csv)
    assert read_data("catalog", synthetic_catalog, split_csv=split_csv) == read_catalog(synthetic_catalog, split_csv)

    with pytest.raises(ValueError, match="unknown data format 'coco'"):
        read_data("coco", tree)
    with pytest.raises(ValueError, match="defines its own splits"):
        read_data("deepfashion", tree, split_csv=split_csv)


def test_retrieval_data_refuses_unknown_split_names_and_bad_photos(tmp_path):
    data = RetrievalData([Photo(tmp_path / "a.jpg", "a", "shop", "train")])
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        data.split("valid")
    with pytest.raises(ValueError, match="domain"):
        Photo(tmp_path / "a.jpg", "a", "street", "train")
    with pytest.raises(ValueError, match="split"):
        Photo(tmp_path / "a.jpg", "a", "shop", "dev")
