"""snap2shop's embedder: a CNN backbone, global pooling, an FC layer and L2 normalisation."""
from .backbones import BACKBONES, WeightsUnavailableError
from .checkpoint import (CheckpointError, LoadedModel, build_from_backbone, load_model,
                         read_checkpoint_config, save_checkpoint)
from .config import EmbedderConfig, Preprocessing
from .embedder import Embedder
from .preprocessing import ImageDecodeError, build_transform, load_image

DEFAULT_MODEL_SPEC = "efficientnet-lite0"

__all__ = [
    "BACKBONES", "DEFAULT_MODEL_SPEC", "CheckpointError", "Embedder", "EmbedderConfig",
    "ImageDecodeError", "LoadedModel", "Preprocessing", "WeightsUnavailableError",
    "build_from_backbone", "build_transform", "load_image", "load_model",
    "read_checkpoint_config", "save_checkpoint",
]
