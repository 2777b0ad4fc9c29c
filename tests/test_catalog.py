"""Behavioural tests for the indexer's reader stage (model/catalog.py)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from model.catalog import (CatalogError, discover_images, entries_from_csv, entries_from_folder,
                             image_root_for, relative_to_root)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------- discover_images


def test_discover_images_recursive_any_case_and_ignores_others(tmp_path):
    root = tmp_path / "photos"
    wanted = [
        root / "a.jpg",
        root / "b.JPEG",
        root / "nested" / "c.Png",
        root / "nested" / "deeper" / "d.webp",
        root / "nested" / "deeper" / "e.bmp",
        root / "f.JpG",
    ]
    for p in wanted:
        _touch(p)
    for p in [root / "notes.txt", root / "nested" / "g.gif", root / "h.jpg.bak", root / "README",
              root / "nested" / "i.tiff", root / ".hidden.jpg", root / "nested" / ".j.png",
              root / ".cache" / "k.jpg", root / "nested" / ".thumbs" / "deep" / "l.png"]:
        _touch(p)
    (root / "m.jpg").mkdir()  # a folder whose name looks like a photo is not a photo

    found = discover_images(root)

    assert sorted(found) == sorted(wanted)
    assert len(found) == len(set(found))
    assert all(isinstance(p, Path) for p in found)


def test_discover_images_order_is_stable_and_independent_of_creation_order(tmp_path):
    names = ["z.jpg", "a.jpg", "m/b.png", "m/a.png", "c/x.webp", "b.bmp"]
    first, second = tmp_path / "one", tmp_path / "two"
    for name in names:
        _touch(first / name)
    for name in reversed(names):
        _touch(second / name)

    order_one = [p.relative_to(first).as_posix() for p in discover_images(first)]
    order_two = [p.relative_to(second).as_posix() for p in discover_images(second)]

    assert order_one == order_two
    assert order_one == [p.relative_to(first).as_posix() for p in discover_images(first)]
    # files of a folder come in sorted order, before its subfolders, which are also sorted
    assert order_one == ["a.jpg", "b.bmp", "z.jpg", "c/x.webp", "m/a.png", "m/b.png"]


def test_discover_images_accepts_str_and_empty_folder(tmp_path):
    _touch(tmp_path / "p" / "x.jpg")
    assert discover_images(str(tmp_path / "p")) == [tmp_path / "p" / "x.jpg"]
    (tmp_path / "empty").mkdir()
    assert discover_images(tmp_path / "empty") == []


def test_discover_images_missing_folder_raises(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        discover_images(tmp_path / "nope")


def test_discover_images_on_a_file_raises(tmp_path):
    f = _touch(tmp_path / "x.jpg")
    with pytest.raises(CatalogError):
        discover_images(f)


# --------------------------------------------------------------------------- entries_from_folder


def test_entries_from_folder_uses_stem_as_item_id(tmp_path):
    root = tmp_path / "shop"
    _touch(root / "shop" / "12345.jpg")
    _touch(root / "detail" / "12345.png")
    _touch(root / "sku-9.WEBP")
    _touch(root / "ignored.txt")

    entries = entries_from_folder(root)

    by_path = {e.path: e for e in entries}
    assert set(by_path) == {(root / "shop" / "12345.jpg").resolve(), (root / "detail" / "12345.png").resolve(),
                            (root / "sku-9.WEBP").resolve()}
    assert by_path[(root / "shop" / "12345.jpg").resolve()].item_id == "12345"
    assert by_path[(root / "detail" / "12345.png").resolve()].item_id == "12345"
    assert by_path[(root / "sku-9.WEBP").resolve()].item_id == "sku-9"
    assert all(e.path.is_absolute() for e in entries)
    assert all(e.attributes == {} for e in entries)


def test_entries_from_folder_relative_root_gives_absolute_paths(tmp_path, monkeypatch):
    _touch(tmp_path / "imgs" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    [entry] = entries_from_folder("imgs")
    assert entry.path == (tmp_path / "imgs" / "a.jpg").resolve()
    assert entry.path.is_absolute()


def test_entries_from_folder_missing_raises(tmp_path):
    with pytest.raises(CatalogError):
        entries_from_folder(tmp_path / "missing")


# --------------------------------------------------------------------------- entries_from_csv


def test_entries_from_csv_extra_columns_become_attributes(tmp_path):
    csv_path = _write_csv(tmp_path / "cat" / "catalog.csv",
                          "path,item_id,category,title,colour\n"
                          "images/a.jpg,sku-1,dress,Red Dress,red\n"
                          "images/b.jpg,sku-1,dress,Red Dress,red\n"
                          "images/c.jpg,sku-2,skirt,\"Skirt, pleated\",navy\n")

    entries = entries_from_csv(csv_path)

    assert [e.item_id for e in entries] == ["sku-1", "sku-1", "sku-2"]
    assert entries[0].attributes == {"category": "dress", "title": "Red Dress", "colour": "red"}
    assert entries[2].attributes == {"category": "skirt", "title": "Skirt, pleated", "colour": "navy"}
    assert "path" not in entries[0].attributes and "item_id" not in entries[0].attributes


def test_entries_from_csv_minimal_columns_have_no_attributes(tmp_path):
    csv_path = _write_csv(tmp_path / "c.csv", "item_id,path\n7,x.png\n")
    [entry] = entries_from_csv(csv_path)
    assert entry.item_id == "7"
    assert entry.path == (tmp_path / "x.png").resolve()
    assert entry.attributes == {}


def test_entries_from_csv_relative_paths_resolve_against_csv_folder(tmp_path, monkeypatch):
    csv_path = _write_csv(tmp_path / "cat" / "catalog.csv",
                          "path,item_id\nimages/a.jpg,1\n./b.jpg,2\n../elsewhere/c.jpg,3\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter

    entries = entries_from_csv(Path("cat") / "catalog.csv")

    assert [e.path for e in entries] == [
        (tmp_path / "cat" / "images" / "a.jpg").resolve(),
        (tmp_path / "cat" / "b.jpg").resolve(),
        (tmp_path / "elsewhere" / "c.jpg").resolve(),
    ]
    assert all(e.path.is_absolute() for e in entries)
    assert csv_path.is_file()


def test_entries_from_csv_relative_paths_resolve_against_images_root(tmp_path):
    csv_path = _write_csv(tmp_path / "meta" / "catalog.csv", "path,item_id\nimages/a.jpg,1\nb.jpg,2\n")
    photos = tmp_path / "photos"

    entries = entries_from_csv(csv_path, images_root=photos)

    assert [e.path for e in entries] == [(photos / "images" / "a.jpg").resolve(), (photos / "b.jpg").resolve()]


def test_entries_from_csv_absolute_paths_are_kept(tmp_path):
    absolute = (tmp_path / "abs" / "z.jpg").resolve()
    csv_path = _write_csv(tmp_path / "c.csv", f"path,item_id\n{absolute},9\nrel.jpg,10\n")

    with_csv_base = entries_from_csv(csv_path)
    with_images_root = entries_from_csv(csv_path, images_root=tmp_path / "other")

    assert with_csv_base[0].path == absolute
    assert with_images_root[0].path == absolute
    assert with_images_root[1].path == (tmp_path / "other" / "rel.jpg").resolve()


def test_entries_from_csv_tolerates_bom_and_whitespace(tmp_path):
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes("\ufeffpath , item_id ,colour\n a.jpg , sku-1 , red \n".encode("utf-8"))

    [entry] = entries_from_csv(csv_path)

    assert entry.item_id == "sku-1"
    assert entry.path == (tmp_path / "a.jpg").resolve()
    assert entry.attributes == {"colour": "red"}


def test_entries_from_csv_utf8_content_is_preserved(tmp_path):
    csv_path = _write_csv(tmp_path / "c.csv", "path,item_id,title\nphotos/été.jpg,sku-ü,Röck – grün\n")
    [entry] = entries_from_csv(csv_path)
    assert entry.path.name == "été.jpg"
    assert entry.item_id == "sku-ü"
    assert entry.attributes == {"title": "Röck – grün"}


def test_entries_from_csv_matches_synthetic_catalog(synthetic_catalog):
    entries = entries_from_csv(synthetic_catalog)
    with synthetic_catalog.open(newline="") as fh:
        rows = list(csv.DictReader(fh))

    assert len(entries) == len(rows) == 24
    assert len({e.item_id for e in entries}) == 12
    for entry, row in zip(entries, rows):
        assert entry.path == (synthetic_catalog.parent / row["path"]).resolve()
        assert entry.path.is_file()
        assert entry.item_id == row["item_id"]
        assert entry.attributes == {k: row[k] for k in ("category", "title", "colour", "pattern")}


@pytest.mark.parametrize("header", ["file,item_id", "path,sku", "item_id", "path", "foo,bar,baz"])
def test_entries_from_csv_without_required_header_raises(tmp_path, header):
    csv_path = _write_csv(tmp_path / "bad.csv", f"{header}\na,b,c\n")
    with pytest.raises(CatalogError) as info:
        entries_from_csv(csv_path)
    message = str(info.value)
    assert str(csv_path) in message
    assert "path" in message and "item_id" in message


def test_entries_from_csv_empty_file_raises(tmp_path):
    csv_path = _write_csv(tmp_path / "empty.csv", "")
    with pytest.raises(CatalogError, match="header"):
        entries_from_csv(csv_path)


@pytest.mark.parametrize("bad_row, line", [
    ("c.jpg,", 4),            # empty item_id
    ("c.jpg,   ", 4),         # whitespace-only item_id
    (",sku-3", 4),            # empty path
    ("c.jpg", 4),             # short row: item_id missing
])
def test_entries_from_csv_empty_fields_raise_with_file_and_line(tmp_path, bad_row, line):
    csv_path = _write_csv(tmp_path / "cat.csv",
                          f"path,item_id,title\na.jpg,sku-1,A\nb.jpg,sku-2,B\n{bad_row}\nd.jpg,sku-4,D\n")
    with pytest.raises(CatalogError) as info:
        entries_from_csv(csv_path)
    assert f"{csv_path}:{line}" in str(info.value)


def test_entries_from_csv_not_utf8_raises_naming_the_file(tmp_path):
    csv_path = _write_csv(tmp_path / "latin1.csv", "path,item_id,title\na.jpg,sku-1,Röck\n", encoding="latin-1")
    with pytest.raises(CatalogError) as info:
        entries_from_csv(csv_path)
    assert str(csv_path) in str(info.value)
    assert "UTF-8" in str(info.value)
    assert info.value.__cause__ is None  # a clean message, not a chained UnicodeDecodeError


def test_entries_from_csv_missing_file_raises(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        entries_from_csv(tmp_path / "nope.csv")
    with pytest.raises(CatalogError):
        entries_from_csv(tmp_path)  # a folder is not a CSV


def test_catalog_error_is_a_value_error():
    assert issubclass(CatalogError, ValueError)


# --------------------------------------------------------------------------- helpers used by build


def test_image_root_for_prefers_images_then_csv_folder(tmp_path):
    assert image_root_for(tmp_path / "imgs", tmp_path / "meta" / "c.csv") == (tmp_path / "imgs").resolve()
    assert image_root_for(None, tmp_path / "meta" / "c.csv") == (tmp_path / "meta").resolve()


def test_relative_to_root_relative_inside_absolute_outside(tmp_path):
    root = tmp_path / "root"
    assert relative_to_root(root / "a" / "b.jpg", root) == "a/b.jpg"
    outside = tmp_path / "other" / "c.jpg"
    assert relative_to_root(outside, root) == str(outside)
    assert os.path.isabs(relative_to_root(outside, root))


def test_symlink_loops_and_repeated_links_index_each_photo_once(tmp_path):
    root = tmp_path / "r"
    _touch(root / "sub" / "a.jpg")
    _touch(root / "other" / "b.jpg")
    (root / "sub" / "loop").symlink_to("..")
    (root / "again").symlink_to("other")
    found = discover_images(root)
    assert sorted(p.name for p in found) == ["a.jpg", "b.jpg"]


def test_csv_errors_name_the_physical_line(tmp_path):
    bad_after_blank = _write_csv(tmp_path / "c.csv", "path,item_id\na.jpg,1\n\nb.jpg,\n")
    with pytest.raises(CatalogError, match=r"c\.csv:4"):
        entries_from_csv(bad_after_blank)
    latin1 = tmp_path / "l.csv"
    latin1.write_bytes("path,item_id,title\na.jpg,1,ok\nb.jpg,2,caf\xe9\n".encode("latin-1"))
    with pytest.raises(CatalogError, match=r"l\.csv:3: not UTF-8"):
        entries_from_csv(latin1)


def test_no_photos_message_names_every_suffix_the_reader_accepts(tmp_path):
    from indexer.ingest import read_entries
    from indexer.errors import IndexBuildError
    from model.preprocessing import IMAGE_SUFFIXES

    (tmp_path / "notes.txt").write_text("no photos here")
    with pytest.raises(IndexBuildError) as info:
        read_entries(tmp_path, None)
    assert all(suffix in str(info.value) for suffix in IMAGE_SUFFIXES) and ".heic" in str(info.value)


def test_csv_entries_carry_their_physical_line(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    csv_path = tmp_path / "catalog.csv"
    csv_path.write_text('path,item_id,title\na.jpg,1,"two\nlines"\n\na.jpg,2,plain\n')
    assert [e.line for e in entries_from_csv(csv_path)] == [3, 5]
