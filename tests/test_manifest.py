"""The typed manifest: it round-trips what this and earlier releases wrote, keeps what it does not
know, refuses what it cannot read, and answers "is this the index's model?" for every caller."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from indexer.__main__ import main as indexer_main
from indexer.add import _load_matching_model
from indexer.errors import IndexOpenError, IndexUpdateError, ModelMismatchError
from indexer.layout import MANIFEST, resolve_version_dir
from indexer.manifest import (INDEX_FORMAT_VERSION, Manifest, ModelIdentity, read_manifest,
                              write_manifest)
from indexer.ray_engine import RayEngineError, _EncodingActor
from indexer.remove import remove_items
from indexer.store import open_index
from indexer.verify import verify_index
from model import load_model
from model.inference import PhotoEncoder, plan_inference
from service.engine import IncompatibleIndexError, SearchEngine, check_compatible

from .conftest import edit_manifest

# Keys a build writes that releases before the store seam, the query side and the batch record did
# not (see the history of indexer/build.py): such a manifest is what older indexes hold on disk.
NEWER_KEYS = ("store", "query_preprocessing", "query_head", "index_choice", "encode", "duplicate_photo_groups")


def _manifest_dict(index: Path) -> dict:
    return json.loads((resolve_version_dir(index) / MANIFEST).read_text(encoding="utf-8"))


def _old_style(manifest: dict) -> dict:
    old = {k: v for k, v in manifest.items() if k not in NEWER_KEYS}
    old["counts"] = {k: v for k, v in manifest["counts"].items() if k != "duplicate_photo_groups"}
    return old | {"format_version": 1}


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_model(str(tiny_checkpoint))


# --------------------------------------------------------------------------- round trips


def test_a_current_manifest_round_trips_to_the_same_bytes(idx, tmp_path):
    path = resolve_version_dir(idx) / MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    assert Manifest.from_dict(data).to_dict() == data
    _, manifest = read_manifest(idx)
    write_manifest(tmp_path / MANIFEST, manifest)
    assert (tmp_path / MANIFEST).read_bytes() == path.read_bytes()


def test_the_typed_fields(idx, tiny_checkpoint, loaded):
    version_dir, manifest = read_manifest(idx)
    assert manifest.model.spec == str(tiny_checkpoint.resolve()) and manifest.model.checksum == loaded.checksum
    assert manifest.model.config == loaded.config.to_dict()
    assert manifest.dim == 32 and manifest.metric == "inner_product" and manifest.index_factory == "Flat"
    assert manifest.preprocessing == loaded.config.preprocessing == manifest.query_preprocessing
    assert manifest.query_head is None and manifest.query_adapter is None
    assert (manifest.counts.vectors, manifest.counts.items, manifest.counts.photos_found,
            manifest.counts.skipped, manifest.counts.duplicate_photo_groups) == (24, 12, 24, 0, 0)
    assert manifest.store == {"kind": "faiss"}
    assert Path(manifest.catalog.image_root).is_dir() and manifest.catalog.csv.endswith(".csv")
    assert manifest.updated_at is None and manifest.history == [] and manifest.absent == frozenset()
    assert manifest.encode["batch_size"] == 8 and manifest.environment["device"] == "cpu"
    assert open_index(idx).manifest == manifest


def test_an_old_manifest_round_trips_and_means_what_it_meant(idx):
    old = _old_style(_manifest_dict(idx))
    manifest = Manifest.from_dict(old)
    assert manifest.to_dict() == old
    assert manifest.store == {"kind": "faiss"}  # versions before the store seam were all FAISS
    assert manifest.query_preprocessing == manifest.preprocessing  # uploads were treated as shop photos
    assert manifest.query_head is None and manifest.counts.duplicate_photo_groups is None
    assert manifest.absent == frozenset({*NEWER_KEYS}) and manifest.format_version == 1


def test_an_old_index_opens_and_a_change_writes_only_what_it_changed(idx, capsys):
    old = _old_style(_manifest_dict(idx))
    edit_manifest(idx, lambda m: (m.clear(), m.update(old)))
    opened = open_index(idx)
    assert opened.manifest.store == {"kind": "faiss"} and opened.store.kind == "faiss" and opened.store.count() == 24
    opened.close()
    assert indexer_main(["info", str(idx)]) == 0
    info = capsys.readouterr().out
    assert "query head" in info and "none (queries are embedded like catalogue photos)" in info
    assert indexer_main(["info", str(idx), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == old

    remove_items(idx, ["sku-0001"])
    after = _manifest_dict(idx)
    # What the change gives a value is written, the rest stays as the old release left it.
    assert after["counts"]["vectors"] == 22 and after["store"] == {"kind": "faiss"}
    assert after["history"][-1]["operation"] == "remove" and after["updated_at"]
    assert "query_preprocessing" not in after and "query_head" not in after and "encode" not in after


def test_unknown_keys_are_kept_through_a_change(idx):
    def add_unknown(m: dict) -> None:
        m["from_the_future"] = {"nested": [1, 2]}
        m["model"]["card"] = "https://example.org/model"
        m["counts"]["faces"] = 3
        m["catalog"]["source"] = "pim"

    edit_manifest(idx, add_unknown)
    data = _manifest_dict(idx)
    manifest = Manifest.from_dict(data)
    assert manifest.to_dict() == data
    assert manifest.extra == {"from_the_future": {"nested": [1, 2]}} and manifest.counts.extra == {"faces": 3}

    remove_items(idx, ["sku-0002"])
    after = _manifest_dict(idx)
    assert after["from_the_future"] == {"nested": [1, 2]} and after["model"]["card"] == "https://example.org/model"
    assert after["counts"]["faces"] == 3 and after["catalog"]["source"] == "pim"


def test_a_manifest_is_not_shared_with_its_source(idx):
    data = _manifest_dict(idx)
    manifest = Manifest.from_dict(data)
    data["skipped"].append({"path": "x", "reason": "y"})
    data["timings"]["total_s"] = -1
    assert manifest.skipped == [] and manifest.timings["total_s"] != -1


# --------------------------------------------------------------------------- refused manifests


def test_a_newer_format_is_refused(idx):
    edit_manifest(idx, lambda m: m.update(format_version=INDEX_FORMAT_VERSION + 1))
    with pytest.raises(IndexOpenError, match=f"newer snap2shop \\(format {INDEX_FORMAT_VERSION + 1}\\)"):
        read_manifest(idx)
    with pytest.raises(IndexOpenError, match="newer"):
        open_index(idx)


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m["counts"].pop("items"), "lacks counts.items"),
    (lambda m: m["counts"].update(vectors="24"), "counts.vectors is not a number"),
    (lambda m: m.pop("dim"), "lacks dim"),
    (lambda m: m["model"].pop("checksum"), "lacks model.checksum"),
    (lambda m: m.update(preprocessing="letterbox"), "not a complete snap2shop index manifest"),
    (lambda m: m.update(format_version="2"), "format_version is '2'"),
])
def test_an_incomplete_manifest_is_one_clear_error(idx, edit, expected):
    edit_manifest(idx, edit)
    with pytest.raises(IndexOpenError, match=expected):
        read_manifest(idx)
    with pytest.raises(IndexOpenError, match=expected):
        verify_index(idx)  # nothing to check the version against


# --------------------------------------------------------------------------- require_model


def _with_checksum(manifest: Manifest, checksum: str) -> Manifest:
    return manifest.replace(model=dataclasses.replace(manifest.model, checksum=checksum))


def test_require_model_accepts_the_model_the_index_was_built_with(idx, loaded):
    version_dir, manifest = read_manifest(idx)
    assert manifest.require_model(loaded, index=version_dir, hint="fix it", embedding=True) is loaded
    assert manifest.model.matches(loaded)
    assert ModelIdentity(loaded.spec, loaded.checksum).require_model(loaded, role="the driver loaded",
                                                                     hint="fix it") is loaded


def test_require_model_refuses_other_weights(idx, loaded):
    version_dir, manifest = read_manifest(idx)
    other = _with_checksum(manifest, "0" * 64)
    with pytest.raises(ModelMismatchError) as refused:
        other.require_model(loaded, index=version_dir, hint="rebuild it")
    message = str(refused.value)
    assert f"model {loaded.spec} (weights sha256 {loaded.checksum[:12]}) is not the model index {version_dir} " \
           f"was built with ({manifest.model.spec}, sha256 {'0' * 12})" in message
    assert message.endswith("its vectors would not be comparable: rebuild it")
    with pytest.raises(KeyError, match="the caller's"):
        other.require_model(loaded, index=version_dir, hint="the caller's", error=KeyError)


def test_require_model_refuses_another_dim_or_preprocessing_only_when_asked(idx, loaded):
    version_dir, manifest = read_manifest(idx)
    wider = manifest.replace(dim=64)
    assert wider.require_model(loaded, index=version_dir, hint="-") is loaded  # the weights are the same
    with pytest.raises(ValueError, match=f"makes 32-dim embeddings but index {version_dir} holds 64-dim"):
        wider.require_model(loaded, index=version_dir, hint="-", error=ValueError, embedding=True)
    larger = manifest.replace(preprocessing=dataclasses.replace(manifest.preprocessing, input_size=128))
    with pytest.raises(ValueError, match="preprocesses photos as .*'input_size': 64.* was built with .*128"):
        larger.require_model(loaded, index=version_dir, hint="-", error=ValueError, embedding=True)


def test_each_caller_raises_its_own_error(idx, loaded, tiny_checkpoint):
    edit_manifest(idx, lambda m: m["model"].update(checksum="0" * 64))
    opened = open_index(idx)
    try:
        with pytest.raises(IncompatibleIndexError, match="is not the model index .*rebuild the index with this model"):
            check_compatible(opened, loaded)
        with pytest.raises(IndexUpdateError, match="is not the model index .*pass --model with the original weights"):
            _load_matching_model(str(tiny_checkpoint), opened)
    finally:
        opened.close()
    with pytest.raises(RayEngineError, match="is not the model the driver loaded .*every Ray node needs the same"):
        _EncodingActor(str(tiny_checkpoint), "0" * 64, "cpu", "fp32")
    problems = verify_index(idx, deep=True)
    assert any("is not the model index" in p and "its weights changed since the build" in p for p in problems)


def test_a_reload_reuses_the_model_only_for_the_same_weights(idx, loaded, tiny_checkpoint):
    embedder = PhotoEncoder(loaded, plan_inference(torch.device("cpu")))
    engine = SearchEngine.load(idx, model_spec=str(tiny_checkpoint), reuse=embedder)
    assert engine.embedder is embedder
    engine.index.close()

    edit_manifest(idx, lambda m: m["model"].update(checksum="0" * 64))
    with pytest.raises(IncompatibleIndexError, match="is not the model index .*configured with this model"):
        SearchEngine.load(idx, model_spec=str(tiny_checkpoint), reuse=embedder)
