"""Checkpoints and model specs.

A checkpoint is one safetensors file: the embedder's weights plus its full config (backbone,
pooling, dim, preprocessing, format version) in the file's metadata. safetensors cannot hold
code, so loading a checkpoint from anywhere never executes anything.

A model spec names what to load:
  efficientnet-lite0              backbone with its ImageNet weights, untrained head
  resnet50:imagenet|none|PATH     backbone with torchvision's weights, random init, or a local file
  path/to/model.safetensors       a trained checkpoint
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .backbones import BACKBONES, WeightsUnavailableError, get_backbone, load_weights_file
from .config import EmbedderConfig
from .embedder import Embedder

CHECKPOINT_FORMAT = "snap2shop-embedder"
CHECKPOINT_VERSION = 1
_RANDOM_INIT_SEED = 0


class CheckpointError(ValueError):
    """A file that was given as a checkpoint is not a usable snap2shop checkpoint."""


@dataclass(frozen=True)
class LoadedModel:
    model: Embedder
    spec: str
    # sha256 over the weights themselves, so an index can tell whether a model is the one it was
    # built with regardless of file names, paths or how the weights were obtained.
    checksum: str
    extra: dict = field(default_factory=dict)  # a checkpoint's extra metadata (adapt's report)

    @property
    def config(self) -> EmbedderConfig:
        return self.model.config


def save_checkpoint(model: Embedder, path: str | Path, extra_metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_VERSION),
        "config": model.config.to_json(),
    }
    if extra_metadata:
        metadata["extra"] = json.dumps(extra_metadata, sort_keys=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # a reader never sees half a checkpoint
    return path


def read_checkpoint_config(path: str | Path) -> EmbedderConfig:
    metadata = _read_metadata(Path(path))
    try:
        return EmbedderConfig.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its config is unusable: {exc}") from None


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{path} is not a safetensors checkpoint ({exc})") from None
    if metadata.get("format") != CHECKPOINT_FORMAT or "config" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a snap2shop embedder checkpoint")
    if int(metadata.get("format_version", "0")) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer snap2shop (format {metadata['format_version']})")
    return metadata


def load_checkpoint(path: str | Path) -> Embedder:
    from safetensors.torch import load_file

    path = Path(path)
    config = read_checkpoint_config(path)
    model = Embedder(config)
    state = load_file(str(path), device="cpu")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes disagree with the config
        raise CheckpointError(f"{path} does not match its own config: {exc}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its own config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def weights_checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'resnet50:none' -> ('resnet50', 'none'); a checkpoint path -> ('checkpoint', path)."""
    name, sep, weights = spec.partition(":")
    if name in BACKBONES:
        return name, (weights if sep else "imagenet")
    if Path(spec).suffix == ".safetensors" or Path(spec).is_file():
        return "checkpoint", spec
    raise ValueError(
        f"model spec {spec!r} is neither a backbone ({', '.join(BACKBONES)}, optionally "
        f"':imagenet', ':none' or ':/path/weights.pth') nor a .safetensors checkpoint file"
    )


def build_from_backbone(name: str, weights: str = "imagenet", **overrides) -> Embedder:
    """A fresh embedder: the backbone's pretrained (or random/local) weights, the given head."""
    backbone = get_backbone(name)
    config = EmbedderConfig(backbone=name, preprocessing=backbone.preprocessing)
    config = replace(config, **overrides)
    with torch.random.fork_rng(devices=[]):
        # Random init is seeded so that an index built with 'resnet50:none' can be served again.
        torch.manual_seed(_RANDOM_INIT_SEED)
        model = Embedder(config)
    if weights == "imagenet":
        backbone.load_pretrained(model.backbone)
    elif weights != "none":
        load_weights_file(name, model.backbone, Path(weights))
    return model


def load_model(spec: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load the embedder a spec names, in eval mode, on `device`."""
    kind, arg = parse_spec(spec)
    extra: dict = {}
    if kind == "checkpoint":
        model = load_checkpoint(arg)
        spec = str(Path(arg).resolve())
        try:
            extra = json.loads(_read_metadata(Path(arg)).get("extra", "{}"))
        except json.JSONDecodeError:
            extra = {}
    else:
        backbone = get_backbone(kind)
        if arg == "none":  # random weights: nothing was measured, keep the plain design
            model = build_from_backbone(kind, arg)
        else:
            model = build_from_backbone(kind, arg, pooling=backbone.zero_shot_pooling)
            if backbone.query_input_size:
                prep = model.config.preprocessing
                model.config = replace(model.config,
                                       query_preprocessing=replace(prep, input_size=backbone.query_input_size))
        if arg not in ("imagenet", "none"):
            spec = f"{kind}:{Path(arg).resolve()}"
        else:
            spec = f"{kind}:{arg}"
    model.eval()
    checksum = weights_checksum(model)
    return LoadedModel(model=model.to(device), spec=spec, checksum=checksum, extra=extra)


__all__ = [
    "CheckpointError", "LoadedModel", "WeightsUnavailableError", "build_from_backbone",
    "load_checkpoint", "load_model", "parse_spec", "read_checkpoint_config", "save_checkpoint",
    "weights_checksum",
]
