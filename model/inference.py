"""How the embedder runs on a device: one definition for the indexer, the service and evaluation.

On a GPU: bf16 autocast and channels_last memory layout (tensor cores want both). On the CPU:
fp32 by default; bf16 can be forced, which is also how the tests exercise the GPU code path.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .garment_crop import crop_photos

log = logging.getLogger("snap2shop.model")

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("no CUDA GPU visible to torch: running on the CPU")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA GPU")
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    return torch.device(requested)


@dataclass(frozen=True)
class InferencePlan:
    device: torch.device
    bf16: bool
    channels_last: bool
    compile_backend: str | None = None  # torch.compile's backend ("inductor"); None: eager

    def describe(self) -> dict:
        return {"device": str(self.device), "precision": "bf16" if self.bf16 else "fp32",
                "memory_format": "channels_last" if self.channels_last else "contiguous"} | (
                   {"compiled": self.compile_backend} if self.compile_backend else {})


def plan_inference(device: torch.device, precision: str = "auto", compile_backend: str | None = None) -> InferencePlan:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    on_gpu = device.type == "cuda"
    return InferencePlan(device=device, bf16=precision == "bf16" or (precision == "auto" and on_gpu),
                         channels_last=on_gpu, compile_backend=compile_backend)


def prepare_model(model: torch.nn.Module, plan: InferencePlan) -> torch.nn.Module:
    model = model.to(plan.device).eval()
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if plan.compile_backend:
        # Worth its start-up cost (tens of seconds) only on long runs: a whole catalogue on a GPU,
        # where fused kernels beat eager mode. dynamic=False: the indexer's batches all have one
        # size but the last, which costs one more compilation rather than slower dynamic kernels.
        model = torch.compile(model, backend=plan.compile_backend, dynamic=False)
    return model


def on_device(images: torch.Tensor, plan: InferencePlan) -> torch.Tensor:
    """A batch moved to the plan's device, in its memory format."""
    images = images.to(plan.device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if plan.channels_last else images


def inference_context(plan: InferencePlan) -> contextlib.ExitStack:
    """No autograd, and bf16 autocast where the plan says so."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(torch.autocast(device_type=plan.device.type, dtype=torch.bfloat16, enabled=plan.bf16))
    return stack


def embed_batch(model: torch.nn.Module, images: torch.Tensor, plan: InferencePlan) -> np.ndarray:
    """(B, 3, H, W) normalised images -> (B, D) float32 unit vectors on the CPU."""
    images = on_device(images, plan)
    with inference_context(plan):
        embeddings = model(images)
    return embeddings.float().cpu().numpy()


def embed_query_batch(model: torch.nn.Module, images: torch.Tensor, plan: InferencePlan,
                      flip: bool = False, photos: Sequence | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Shoppers' photos (B, 3, H, W) at the query preprocessing -> ((B, D) unit vectors, or (B, S, D) when
    the model sees a query at S scales; (B, 4) garment boxes in frame units, or None).

    `photos`: the decoded photos (PIL) the tensors were made from. A model that locates the garment
    then crops it out of the photo rather than out of the smaller query tensor (model/garment_crop).
    `flip`: test-time augmentation, the mean of the photo's and its mirror image's embeddings."""
    net = getattr(model, "_orig_mod", model)  # a torch.compile'd model keeps its methods on the original
    if photos is not None and net.locates_garments:
        return _embed_photo_crops(net, images, photos, plan, flip)
    images = on_device(images, plan)
    with inference_context(plan):
        embeddings, boxes = net.encode_query(images)
        if flip:
            mirrored, _ = net.encode_query(torch.flip(images, dims=[3]))
            embeddings = torch.nn.functional.normalize(embeddings.float() + mirrored.float(), dim=-1)
    return embeddings.float().cpu().numpy(), (boxes.float().cpu().numpy() if boxes is not None else None)


def _embed_photo_crops(net: torch.nn.Module, images: torch.Tensor, photos: Sequence, plan: InferencePlan,
                       flip: bool) -> tuple[np.ndarray, np.ndarray]:
    if len(photos) != len(images):
        raise ValueError(f"{len(photos)} photos for {len(images)} query tensors")
    with inference_context(plan):
        _, boxes = net.locate_garments(on_device(images, plan))
    boxes = boxes.float().cpu().numpy()
    crops = on_device(crop_photos(photos, boxes, images.shape[-1], net.config.preprocessing), plan)
    with inference_context(plan):
        embeddings = net.embed_query_crops(crops)
        if flip:  # the mirrored photo's garment is the mirrored crop: no second locate pass
            mirrored = net.embed_query_crops(torch.flip(crops, dims=[3]))
            embeddings = torch.nn.functional.normalize(embeddings.float() + mirrored.float(), dim=-1)
    return embeddings.float().cpu().numpy(), boxes
