"""Shared fixtures: a tiny checkpoint, a small synthetic catalogue and an index built from them.

The tiny model (ResNet18, random but seeded weights, 64 px input, 32 dims) keeps the suite fast
on two CPU cores while exercising the same code paths as the real models.
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

logging.getLogger("faiss.loader").setLevel(logging.WARNING)

from demo.synth import generate_catalog  # noqa: E402
from model import Preprocessing, build_from_backbone, save_checkpoint  # noqa: E402
from model.backbones import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

TINY_PREP = Preprocessing(input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="letterbox")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    model = build_from_backbone("resnet18", "none", dim=32, preprocessing=TINY_PREP)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def synthetic_catalog(tmp_path_factory) -> Path:
    """catalog.csv of 12 items x 2 photos (96 px) with category/title/colour/pattern columns."""
    return generate_catalog(tmp_path_factory.mktemp("catalog"), n_items=12, photos_per_item=2, size=96, seed=1)


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, tiny_checkpoint, synthetic_catalog) -> Path:
    from indexer.build import BuildOptions, build_index

    out = tmp_path_factory.mktemp("index") / "idx"
    build_index(BuildOptions(out=out, catalog=synthetic_catalog, model_spec=str(tiny_checkpoint),
                             batch_size=8, device="cpu", workers=0, progress=False))
    return out


@pytest.fixture
def idx(tmp_path, tiny_index) -> Path:
    """A private copy of tiny_index, free to change."""
    from .test_indexer import _copy_index

    return _copy_index(tiny_index, tmp_path / "idx")


@pytest.fixture
def new_folder(tmp_path) -> Path:
    """Three small photos that tiny_index does not hold."""
    from .test_indexer import _folder

    return _folder(tmp_path / "new", ["new-1.jpg", "new-2.png", "sub/new-3.jpg"])


def edit_manifest(index_dir: Path, edit) -> None:
    """Rewrite the live version's manifest.json through `edit(manifest_dict)` (for damage tests)."""
    import json

    from indexer.layout import MANIFEST, resolve_version_dir

    path = resolve_version_dir(index_dir) / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
