"""Training end to end on tiny models and miniature datasets: every negative strategy, resume,
seeding, the metrics log and plots, and the checkpoint serving unchanged through indexer and service."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from model import load_model
from model.__main__ import main as model_main
from model.checkpoint import read_checkpoint_config
from model.training.data import read_data
from model.training.evaluate import evaluate
from model.training.train import TrainConfig, curve_path, metrics_path, state_path, train

from .deepfashion_tree import write_deepfashion_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_deepfashion_tree(tmp_path_factory.mktemp("deepfashion") / "DeepFashion", n_items=8, seed=3)


def _config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(data=data, format="deepfashion", out=out, backbone="resnet18", weights="none", dim=16,
                    input_size=64, epochs=1, batch_size=12, views_per_item=2, workers=0, progress=False,
                    device="cpu", seed=5)
    settings.update(overrides)
    return TrainConfig(**settings)


def _events(out: Path, kind: str) -> list[dict]:
    lines = metrics_path(out).read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == kind]


def test_batch_hard_training_writes_checkpoint_metrics_and_curve(tree, tmp_path):
    out = train(_config(tree, tmp_path / "m.safetensors", epochs=2))
    gem = read_checkpoint_config(train(_config(tree, tmp_path / "g.safetensors", pooling="gem", bnneck=True)))
    assert (gem.pooling, gem.bnneck) == ("gem", True)
    config = read_checkpoint_config(out)
    assert (config.backbone, config.dim, config.preprocessing.input_size, config.pooling, config.bnneck) == \
        ("resnet18", 16, 64, "max", False)
    steps, epochs = _events(out, "step"), _events(out, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert steps and all(np.isfinite(s["loss"]) and s["img_per_s"] > 0 for s in steps)
    assert curve_path(out).stat().st_size > 5_000 and state_path(out).is_file()
    with safe_open(str(out), framework="pt") as handle:
        assert json.loads(handle.metadata()["extra"])["epoch"] == 2


@pytest.mark.parametrize("negatives", ["adjacent", "hard"])
def test_triplet_strategies_train(tree, tmp_path, negatives):
    out = train(_config(tree, tmp_path / f"{negatives}.safetensors", negatives=negatives))
    assert _events(out, "epoch")[0]["steps"] >= 1
    assert load_model(str(out)).model.embedding_dim == 16


def test_same_seed_same_weights(tree, tmp_path):
    a = load_model(str(train(_config(tree, tmp_path / "a.safetensors"))))
    b = load_model(str(train(_config(tree, tmp_path / "b.safetensors"))))
    c = load_model(str(train(_config(tree, tmp_path / "c.safetensors", seed=6))))
    assert a.checksum == b.checksum != c.checksum


def test_resume_continues_where_it_stopped(tree, tmp_path):
    out = tmp_path / "r.safetensors"
    train(_config(tree, out, epochs=1))
    first_state = state_path(out).read_bytes()
    train(_config(tree, out, epochs=2, resume=True))
    assert [e["epoch"] for e in _events(out, "epoch")] == [1, 2]  # epoch 1 was not trained again
    assert state_path(out).read_bytes() != first_state
    with safe_open(str(out), framework="pt") as handle:
        assert json.loads(handle.metadata()["extra"])["epoch"] == 2


def test_training_beats_the_untrained_model_on_what_it_learned(tree, tmp_path):
    data = read_data("deepfashion", tree)
    out = train(_config(tree, tmp_path / "fit.safetensors", epochs=6, lr=1e-3, batch_size=18))
    before = evaluate(data, load_model(str(train(_config(tree, tmp_path / "zero.safetensors", lr=1e-12)))),
                      split="train", device="cpu", workers=0, progress=False)
    after = evaluate(data, load_model(str(out)), split="train", device="cpu", workers=0, progress=False)
    assert after["top1"] > before["top1"], (before["top1"], after["top1"])
    assert _events(out, "epoch")[-1]["loss"] < _events(out, "epoch")[0]["loss"]


def test_catalog_mode_synthesises_queries(tmp_path, synthetic_catalog):
    split = tmp_path / "split.csv"
    rows = synthetic_catalog.read_text().splitlines()[1:]
    items = sorted({r.split(",")[1] for r in rows})
    split.write_text("path,item_id,split\n" + "".join(
        f"x,{item},{'test' if n % 4 == 0 else 'train'}\n" for n, item in enumerate(items)))
    out = train(_config(synthetic_catalog, tmp_path / "cat.safetensors", format="catalog", split_csv=split))
    result = evaluate(read_data("catalog", synthetic_catalog, split_csv=split), load_model(str(out)),
                      split="test", device="cpu", workers=0, progress=False)
    assert result["synthesised_queries"] is True
    assert result["queries"] == len([i for n, i in enumerate(items) if n % 4 == 0])
    assert result["gallery_items"] == len(items)  # train items stay in the gallery as distractors


def test_trained_checkpoint_serves_through_indexer_and_service(tree, tmp_path, synthetic_catalog):
    from fastapi.testclient import TestClient

    from indexer.build import BuildOptions, build_index
    from service.app import create_app
    from service.settings import Settings

    out = train(_config(tree, tmp_path / "serve.safetensors"))
    build_index(BuildOptions(out=tmp_path / "idx", catalog=synthetic_catalog, model_spec=str(out),
                             device="cpu", workers=0, progress=False))
    photo = next((synthetic_catalog.parent / "images").glob("*.jpg"))
    with TestClient(create_app(Settings(index=tmp_path / "idx", device="cpu"))) as client:
        body = client.post("/search?k=3", files={"image": (photo.name, photo.read_bytes())}).json()
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_cli_train_and_evaluate(tree, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert model_main(["train", "--data", str(tree), "--format", "deepfashion", "--out", str(out), "--backbone",
                       "resnet18", "--weights", "none", "--dim", "8", "--input-size", "64", "--epochs", "1",
                       "--batch-size", "9", "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    report = tmp_path / "eval.json"
    assert model_main(["evaluate", "--data", str(tree), "--format", "deepfashion", "--model", str(out),
                       "--model", "resnet18:none", "--workers", "0", "--device", "cpu", "--quiet",
                       "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-50" in printed
    results = json.loads(report.read_text())
    assert len(results) == 2 and {"top1", "top5", "top10", "top20", "top50", "curve"} <= results[0].keys()
    assert report.with_suffix(".png").stat().st_size > 5_000


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert model_main(["train", "--data", str(tmp_path / "nope"), "--format", "deepfashion",
                       "--out", str(tmp_path / "x.safetensors"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
