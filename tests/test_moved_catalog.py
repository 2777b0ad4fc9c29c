"""An index built on one machine, served after its catalogue folder has moved (--image-root)."""
from __future__ import annotations

import csv
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from demo.synth import generate_catalog
from indexer.layout import METADATA_FILE, resolve_version_dir
from indexer.manifest import read_manifest
from service.app import create_app
from service.settings import Settings


def _build(catalogue: Path, out: Path, checkpoint: Path) -> Path:
    from indexer.build import BuildOptions, build_index

    build_index(BuildOptions(out=out, catalog=catalogue / "catalog.csv", model_spec=str(checkpoint),
                             batch_size=8, device="cpu", workers=0, progress=False))
    return out


@pytest.fixture
def moved(tmp_path, tiny_checkpoint) -> tuple[Path, Path, Path]:
    """(index, old catalogue folder, new catalogue folder): built where the catalogue was, then the
    catalogue folder moved elsewhere, as when it is mounted at another path in a container."""
    old = tmp_path / "build-machine" / "shop"
    generate_catalog(old, n_items=6, photos_per_item=1, size=96, seed=5)
    index = _build(old, tmp_path / "idx", tiny_checkpoint)
    new = tmp_path / "mounted" / "elsewhere"
    new.parent.mkdir(parents=True)
    shutil.move(old, new)
    assert not old.exists()
    return index, old, new


def _photos(catalogue: Path) -> dict[str, Path]:
    with (catalogue / "catalog.csv").open(newline="") as handle:
        return {row["item_id"]: catalogue / row["path"] for row in csv.DictReader(handle)}


def _search(client: TestClient, photo: Path) -> dict:
    response = client.post("/search", files={"image": ("q.jpg", photo.read_bytes(), "image/jpeg")},
                           params={"k": 3})
    assert response.status_code == 200, response.text
    return response.json()


def test_paths_are_stored_relative_to_the_catalogue_root(moved):
    index, old, _ = moved
    version, manifest = read_manifest(index)
    assert manifest.catalog.image_root == str(old.resolve())  # the default root, kept
    with sqlite3.connect(version / METADATA_FILE) as conn:
        paths = [row[0] for row in conn.execute("SELECT path FROM images")]
    assert paths and all(p.startswith("images/") and not Path(p).is_absolute() for p in paths)


def test_served_with_the_new_root_from_settings(moved):
    index, _, new = moved
    photos = _photos(new)
    with TestClient(create_app(Settings(index=index, device="cpu", image_root=new, reload_poll_s=0))) as client:
        item_id, photo = next(iter(photos.items()))
        top = _search(client, photo)["results"][0]
        assert top["item_id"] == item_id
        image = client.get(top["image_url"])
        assert image.status_code == 200 and image.content == photo.read_bytes()
        health = client.get("/healthz").json()["photos"]
        assert health["ok"] and health["image_root"] == str(new) and health["image_root_from"] == "settings"
        assert health["problem"] is None and health["found"] == health["sampled"] == 6


def test_served_with_the_new_root_from_the_environment(moved, monkeypatch):
    index, _, new = moved
    monkeypatch.setenv("SNAP2SHOP_IMAGE_ROOT", str(new))
    settings = Settings.from_env(index=index, device="cpu", reload_poll_s=0)
    assert settings.image_root == new
    with TestClient(create_app(settings)) as client:
        item_id, photo = list(_photos(new).items())[3]
        top = _search(client, photo)["results"][0]
        assert top["item_id"] == item_id
        assert client.get(top["image_url"]).content == photo.read_bytes()
        assert client.get(f"/items/{item_id}/image").status_code == 200


def test_without_the_new_root_search_works_and_photos_say_how_to_fix_it(moved, caplog):
    index, old, new = moved
    caplog.set_level(logging.WARNING, logger="snap2shop.service")
    with TestClient(create_app(Settings(index=index, device="cpu", reload_poll_s=0))) as client:
        warnings = [r.getMessage() for r in caplog.records
                    if r.levelno == logging.WARNING and "--image-root" in r.getMessage()]
        assert len(warnings) == 1, warnings  # one line, naming the root looked in and the fix
        assert str(old) in warnings[0] and "SNAP2SHOP_IMAGE_ROOT" in warnings[0]
        item_id, photo = next(iter(_photos(new).items()))
        results = _search(client, photo)["results"]
        assert results[0]["item_id"] == item_id
        image = client.get(results[0]["image_url"])
        assert image.status_code == 404 and "--image-root" in image.json()["detail"]
        assert client.get(f"/items/{item_id}").status_code == 200  # metadata needs no photo
        health = client.get("/healthz").json()
        assert health["status"] == "ok"
        assert health["photos"]["ok"] is False and health["photos"]["found"] == 0
        assert health["photos"]["image_root_from"] == "manifest" and "--image-root" in health["photos"]["problem"]


def test_an_override_that_is_not_a_folder_is_reported_not_fatal(moved, caplog):
    index, _, new = moved
    caplog.set_level(logging.WARNING, logger="snap2shop.service")
    with TestClient(create_app(Settings(index=index, device="cpu", image_root=new / "typo",
                                        reload_poll_s=0))) as client:
        assert any("is not a folder" in r.getMessage() for r in caplog.records)
        _search(client, next(iter(_photos(new).values())))
        assert client.get("/healthz").json()["photos"]["image_root_from"] == "settings"


def test_some_photos_missing_points_at_verify(moved, caplog):
    index, _, new = moved
    photos = list(_photos(new).values())
    photos[0].unlink()
    caplog.set_level(logging.WARNING, logger="snap2shop.service")
    with TestClient(create_app(Settings(index=index, device="cpu", image_root=new, reload_poll_s=0))) as client:
        assert any("1 of 6 sampled" in r.getMessage() and "indexer verify" in r.getMessage()
                   for r in caplog.records)
        health = client.get("/healthz").json()["photos"]
        assert (health["found"], health["sampled"], health["ok"]) == (5, 6, False)


def test_hot_reload_keeps_the_override(moved):
    index, _, new = moved
    with TestClient(create_app(Settings(index=index, device="cpu", image_root=new, reload_poll_s=0))) as client:
        services = client.app.state.services
        outcome = services.holder.reload(force=True)
        assert outcome.reloaded, outcome
        assert services.holder.engine.photos.path == new and services.holder.engine.photos.ok
        item_id, photo = next(iter(_photos(new).items()))
        assert client.get(f"/items/{item_id}/image").content == photo.read_bytes()


def test_photos_outside_the_root_stay_absolute_and_keep_working(tmp_path, tiny_checkpoint, synthetic_catalog):
    """A CSV row may name a photo outside the catalogue root: stored absolute, not re-pointed."""
    shop = synthetic_catalog.parent
    outside = tmp_path / "outside" / "far.jpg"
    outside.parent.mkdir()
    first = next(iter(_photos(shop).values()))
    shutil.copyfile(first, outside)
    catalogue = tmp_path / "cat"
    (catalogue / "images").mkdir(parents=True)
    second = list(_photos(shop).values())[1]
    shutil.copyfile(second, catalogue / "images" / "near.jpg")
    (catalogue / "catalog.csv").write_text(f"path,item_id\nimages/near.jpg,near\n{outside},far\n")
    _build(catalogue, tmp_path / "idx", tiny_checkpoint)
    with sqlite3.connect(resolve_version_dir(tmp_path / "idx") / METADATA_FILE) as conn:
        stored = dict(conn.execute("SELECT item_id, path FROM images"))
    assert stored == {"near": "images/near.jpg", "far": str(outside)}
    new = tmp_path / "moved-cat"
    shutil.move(catalogue, new)
    with TestClient(create_app(Settings(index=tmp_path / "idx", device="cpu", image_root=new,
                                        reload_poll_s=0))) as client:
        assert client.get("/items/near/image").content == second.read_bytes()
        assert client.get("/items/far/image").content == first.read_bytes()
