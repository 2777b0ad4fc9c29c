"""`--batch-size auto|N`: one rule per device (model/batch_size.py) for the indexer, `adapt` and the
service's micro-batches; the number actually used is what the logs, the manifest and the report say."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from model import batch_size as batch_module
from model.batch_size import (CPU_BATCH_SIZE, CUDA_BATCH_SIZE, SMALL_GPU_BATCH_SIZE, parse_batch_size,
                              resolve_batch_size)

GIB = 2**30
BAD_VALUES = [0, -3, "0", "-3", "big", "", "2.5", 2.5, True, None]


# --- the rule -----------------------------------------------------------------------------------

def test_auto_on_the_cpu_is_the_measured_best():
    assert CPU_BATCH_SIZE == 16
    assert resolve_batch_size("auto", torch.device("cpu")) == 16
    assert resolve_batch_size("auto", "cpu") == 16
    assert resolve_batch_size(" AUTO ", "cpu") == 16


def test_auto_on_a_gpu_is_larger_and_halved_on_a_small_one():
    # No GPU is needed: a torch.device("cuda") is only a name until something runs on it.
    cuda = torch.device("cuda")
    assert resolve_batch_size("auto", cuda, gpu_memory_bytes=80 * GIB) == CUDA_BATCH_SIZE == 64
    assert resolve_batch_size("auto", "cuda:1", gpu_memory_bytes=24 * GIB) == 64
    assert resolve_batch_size("auto", cuda, gpu_memory_bytes=4 * GIB) == SMALL_GPU_BATCH_SIZE == 32


def test_auto_on_a_gpu_asks_torch_for_its_memory(monkeypatch):
    asked = []

    def memory(device):
        asked.append(device)
        return 6 * GIB

    monkeypatch.setattr(batch_module, "_gpu_memory_bytes", memory)
    assert resolve_batch_size("auto", torch.device("cuda")) == 32
    assert asked == [torch.device("cuda")]
    # where torch cannot tell (no CUDA build, no such GPU), the plain GPU rule
    monkeypatch.setattr(batch_module, "_gpu_memory_bytes", lambda device: None)
    assert resolve_batch_size("auto", torch.device("cuda")) == 64


def test_a_device_without_a_rule_of_its_own_gets_the_cautious_one():
    assert resolve_batch_size("auto", "mps") == CPU_BATCH_SIZE


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_an_explicit_number_always_wins(device):
    assert resolve_batch_size(32, device, gpu_memory_bytes=80 * GIB) == 32
    assert resolve_batch_size("7", device, gpu_memory_bytes=80 * GIB) == 7
    assert resolve_batch_size(1, device, gpu_memory_bytes=80 * GIB) == 1


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_bad_values_are_one_clear_line(bad):
    with pytest.raises(ValueError, match=r"^--batch-size must be auto or a whole number of at least 1, got") as err:
        parse_batch_size(bad, "--batch-size")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="must be auto or a whole number"):
        resolve_batch_size(bad, "cpu")


def test_parse_keeps_auto_and_makes_numbers_ints():
    assert parse_batch_size("auto") == "auto"
    assert parse_batch_size("16") == 16 and isinstance(parse_batch_size("16"), int)
    assert parse_batch_size(64) == 64


def test_the_rule_imports_no_upper_layer():
    import ast

    tree = ast.parse(Path(batch_module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {name.split(".")[0] for name in imported} & {"indexer", "service"}, imported


# --- the CLIs: auto, N, bad ---------------------------------------------------------------------

def _indexer_args(*extra: str):
    from indexer.__main__ import make_parser

    return make_parser().parse_args(["build", "--out", "x", "--images", "y", *extra])


def test_indexer_cli_takes_auto_by_default_a_number_or_refuses(capsys):
    assert _indexer_args().batch_size == "auto"
    assert _indexer_args("--batch-size", "auto").batch_size == "auto"
    assert _indexer_args("--batch-size", "8").batch_size == 8
    from indexer.__main__ import make_parser

    assert make_parser().parse_args(["add", "idx", "--images", "y"]).batch_size == "auto"
    for bad in ("0", "-3", "big"):
        with pytest.raises(SystemExit) as exit_info:
            _indexer_args("--batch-size", bad)
        assert exit_info.value.code == 2
        error = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(error) == 1 and "--batch-size" in error[0] and "must be auto or a whole number" in error[0], error


def test_indexer_cli_help_says_auto_decoding_is_normal(capsys):
    with pytest.raises(SystemExit):
        _indexer_args("--help")
    help_text = " ".join(capsys.readouterr().out.split())
    assert "auto (default) and normal" in help_text and "starved" in help_text


def test_adapt_cli_takes_auto_by_default_a_number_or_refuses(capsys):
    from model.__main__ import make_parser

    base = ["adapt", "--data", "d", "--format", "catalog", "--out", "a.safetensors"]
    assert make_parser().parse_args(base).batch_size == "auto"
    assert make_parser().parse_args(base + ["--batch-size", "auto"]).batch_size == "auto"
    assert make_parser().parse_args(base + ["--batch-size", "12"]).batch_size == 12
    for bad in ("0", "-3", "big"):
        with pytest.raises(SystemExit) as exit_info:
            make_parser().parse_args(base + ["--batch-size", bad])
        assert exit_info.value.code == 2
        error = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(error) == 1 and "must be auto or a whole number" in error[0], error


def test_service_cli_refuses_a_bad_micro_batch_size(capsys):
    from service.__main__ import main

    for bad in ("0", "big"):
        with pytest.raises(SystemExit) as exit_info:
            main(["--index", "nowhere", "--batch-max-size", bad])
        assert exit_info.value.code == 2
        error = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(error) == 1 and "--batch-max-size" in error[0], error


# --- the indexer --------------------------------------------------------------------------------

def _photos(folder: Path, count: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB").save(folder / f"{n:02d}.jpg")
    return folder


def _build(out: Path, images: Path, checkpoint: Path, **options):
    from indexer.build import BuildOptions, build_index
    from indexer.manifest import read_manifest

    build_index(BuildOptions(out=out, images=images, model_spec=str(checkpoint), device="cpu", workers=0,
                             progress=False, **options))
    return read_manifest(out)[1]


def test_build_runs_and_records_the_batch_the_rule_chose(tmp_path, tiny_checkpoint, monkeypatch, caplog):
    from indexer import encode as encode_module

    passes: list[int] = []
    embed = encode_module.embed_batch

    def counting(model, images, plan):
        passes.append(len(images))
        return embed(model, images, plan)

    monkeypatch.setattr(encode_module, "embed_batch", counting)
    images = _photos(tmp_path / "shop", 20)
    with caplog.at_level(logging.INFO, logger="snap2shop.indexer"):
        manifest = _build(tmp_path / "idx", images, tiny_checkpoint)  # batch_size: the default, auto
    assert passes == [16, 4]
    assert manifest.encode == {"batch_size": 16, "requested_batch_size": "auto"}
    assert "batches of 16 (auto on cpu)" in caplog.text


def test_build_records_an_explicit_batch_as_given(tmp_path, tiny_checkpoint, capsys):
    images = _photos(tmp_path / "shop", 6)
    manifest = _build(tmp_path / "idx", images, tiny_checkpoint, batch_size=5)
    assert manifest.encode == {"batch_size": 5, "requested_batch_size": 5}
    from indexer.__main__ import main

    assert main(["info", str(tmp_path / "idx")]) == 0
    assert "batch 5" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [0, -3, "big"])
def test_build_options_refuse_a_bad_batch_before_any_work(tmp_path, bad):
    from indexer.build import BuildOptions

    with pytest.raises(ValueError, match="--batch-size must be auto or a whole number"):
        BuildOptions(out=tmp_path / "idx", images=tmp_path, batch_size=bad)


def test_encode_paths_reports_the_batch_it_ran(tmp_path, tiny_checkpoint):
    from indexer.encode import encode_paths
    from model import load_model

    paths = sorted(_photos(tmp_path / "shop", 3).iterdir())
    loaded = load_model(str(tiny_checkpoint))
    assert encode_paths(paths, loaded, workers=0, progress=False).batch_size == 16
    assert encode_paths(paths, loaded, batch_size=2, workers=0, progress=False).batch_size == 2


# --- adapt --------------------------------------------------------------------------------------

# tests/test_adapt.py's FAST pattern, smaller still: the point here is the batch, not the head.
FAST = dict(input_size=64, query_size=96, views=1, dim=8, workers=0, progress=False, foreground=False,
            locate=False, head="whiten")


def test_adapt_config_takes_auto_by_default_and_refuses_bad_values(tmp_path):
    from model.training.adapt import AdaptConfig

    base = dict(data=tmp_path, format="catalog", out=tmp_path / "a.safetensors")
    assert AdaptConfig(**base).batch_size == "auto"
    assert AdaptConfig(**base, batch_size=4).batch_size == 4
    for bad in (0, -3, "big"):
        with pytest.raises(ValueError, match="--batch-size must be auto or a whole number"):
            AdaptConfig(**base, batch_size=bad)


def test_adapt_with_auto_runs_at_the_rules_batch_and_reports_it(tmp_path, monkeypatch):
    from demo.synth import generate_catalog
    from model.training import adapt as adapt_module

    shop = generate_catalog(tmp_path / "shop", n_items=8, photos_per_item=1, size=64, seed=5).parent / "images"
    passes: list[int] = []
    encode_rows = adapt_module.encode_rows

    def noting(part, dataset, backbone, plan, batch_size, *args, **kwargs):
        passes.append(batch_size)
        return encode_rows(part, dataset, backbone, plan, batch_size, *args, **kwargs)

    monkeypatch.setattr(adapt_module, "encode_rows", noting)
    out = tmp_path / "a.safetensors"
    adapt_module.adapt(adapt_module.AdaptConfig(data=shop, format="catalog", out=out, cache=tmp_path / "cache",
                                                batch_size="auto", **FAST))
    assert passes and set(passes) == {16}
    report = json.loads(out.with_name("a.adapt.json").read_text())
    assert report["batch_size"] == 16


# --- the service --------------------------------------------------------------------------------

def test_service_setting_is_auto_by_default_and_takes_numbers_from_the_environment():
    from service.settings import Settings

    assert Settings().batch_max_size == "auto"
    assert Settings.from_env({"SNAP2SHOP_BATCH_MAX_SIZE": "8"}).batch_max_size == 8
    assert Settings.from_env({"SNAP2SHOP_BATCH_MAX_SIZE": "auto"}).batch_max_size == "auto"
    assert Settings(batch_max_size=4).batch_max_size == 4
    for bad in ("0", "-3", "big"):
        with pytest.raises(ValueError, match="batch_max_size must be auto or a whole number"):
            Settings.from_env({"SNAP2SHOP_BATCH_MAX_SIZE": bad})


def test_service_micro_batches_follow_the_embedders_device(tiny_index, monkeypatch):
    from service.engine import SearchEngine
    from service.limits import Capacity
    from service.observability import ServiceMetrics
    from service.runtime import start_services
    from service.settings import Settings

    engine = SearchEngine.load(tiny_index, device="cpu")
    try:
        for setting, device, expected in [("auto", "cpu", 16), (4, "cpu", 4), ("auto", "cuda", 64), (8, "cuda", 8)]:
            # A GPU plan in name only: nothing is embedded, the batcher only needs its size.
            engine.plan = dataclasses.replace(engine.plan, device=torch.device(device))
            monkeypatch.setattr(batch_module, "_gpu_memory_bytes", lambda _device: 80 * GIB)
            settings = Settings(index=tiny_index, device="cpu", batch_max_size=setting, reload_poll_s=0)
            services = start_services(settings, engine, ServiceMetrics(), Capacity(limit=4))
            try:
                assert services.batcher.max_size == expected
                assert services.live_numbers()["max_batch_size"] == expected
            finally:
                services.batcher.close()
    finally:
        engine.index.close()


def test_readyz_shows_the_micro_batch_size(tiny_index):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    with TestClient(create_app(Settings(index=tiny_index, device="cpu", reload_poll_s=0))) as client:
        assert client.get("/readyz").json()["max_batch_size"] == 16
