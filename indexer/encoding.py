"""The engine switch: how `indexer build` and `indexer add` encode photos, locally or on Ray Data.

Above both engines, so each imports the shared dataset and result from encode.py without a loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from model import LoadedModel
from model.batch_size import AUTO, parse_batch_size
from model.inference import plan_inference

from .encode import EncodeResult, encode_paths

ENGINES = ("local", "ray")


@dataclass(frozen=True, kw_only=True)
class EncodingOptions:
    """How `indexer build` and `indexer add` encode photos."""
    batch_size: int | str = AUTO  # or a number: see model/batch_size.py
    device: str = "auto"
    precision: str = "auto"
    compile_backend: str | None = None  # torch.compile backend; None: eager
    jpeg_decode: str = "workers"  # or "device": see encode_paths
    decode_priority: str = "auto"  # or "idle", "normal": see encode_paths
    workers: int | None = None
    progress: bool = True
    engine: str = "local"  # or "ray": see ray_engine.encode_paths_on_ray
    ray_address: str | None = None
    ray_actors: int | None = None

    def __post_init__(self) -> None:
        parse_batch_size(self.batch_size, "--batch-size")  # a bad value fails before the model loads

    def encode(self, paths: Sequence[Path], loaded: LoadedModel, device: torch.device) -> EncodeResult:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "ray":
            from .ray_engine import encode_paths_on_ray

            return encode_paths_on_ray(paths, loaded, batch_size=self.batch_size, device=self.device,
                                       precision=self.precision, address=self.ray_address,
                                       actors=self.ray_actors, progress=self.progress)
        return encode_paths(paths, loaded, batch_size=self.batch_size, device=device, workers=self.workers,
                            progress=self.progress, plan=plan_inference(device, self.precision, self.compile_backend),
                            jpeg_decode=self.jpeg_decode, decode_priority=self.decode_priority)
