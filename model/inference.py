"""How the embedder runs on a device: one definition for the indexer, the service and evaluation;
and PhotoEncoder, the runtime that turns a shopper's uploaded bytes into query vectors.

The channels_last memory layout everywhere: tensor cores want it, and so do the CPU's oneDNN
convolutions (2-core CPU, glibc malloc kept as model/cpu_runtime keeps it, medians of 5:
efficientnet-lite0 at 224 px in batches of 16, 17.6 -> 14.5 ms a photo; one 384 px query 51.0 -> 45.5
ms; resnet50 79.1 -> 65.3 ms a photo; a training step of lite0 on 16 photos 1,091 -> 674 ms).
bf16 autocast on a GPU; on the CPU fp32 by default, and bf16 can be forced, which is also how the
tests exercise the GPU code path.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .checkpoint import LoadedModel
from .garment_crop import crop_photos, crop_source_size
from .preprocessing import Box, build_transform, crop_to_box, fit_inside_size, load_image, load_input_image

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
                         channels_last=True, compile_backend=compile_backend)


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
        fmap, boxes = net.locate_garments(on_device(images, plan))
    crops = torch.cat([crop_photos(photos, box_set.float().cpu().numpy(), images.shape[-1], net.config.preprocessing)
                       for box_set in net.adapter.query_boxes(boxes)])
    with inference_context(plan):
        embeddings = net.embed_query_views(on_device(crops, plan), len(photos), flip, frame_maps=fmap)
    return embeddings.float().cpu().numpy(), boxes.float().cpu().numpy()


# Test-time augmentation of uploads: "flip" also embeds the mirrored photo and averages the two;
# "auto" flips for adapted models (measured: +0.005 to +0.03 top-1 for one more 224 px pass) and
# not for the zero-shot one, where it measured no gain.
TTA_MODES = ("auto", "none", "flip")


@dataclass(frozen=True)
class QueryFrame:
    """Where a query's letterboxed input lies in the uploaded photo, to map a garment box back.

    `region` is the part of the upright photo that was searched (the whole photo, or the user's box),
    in the photo's own pixels; `content` is where that region sits in the size x size input frame."""

    region: tuple[float, float, float, float]
    content: tuple[int, int, int, int]  # left, top, width, height in frame pixels
    size: int

    @classmethod
    def of(cls, region: tuple[float, float, float, float], content_size: tuple[int, int], size: int) -> "QueryFrame":
        width, height = content_size
        return cls(region, ((size - width) // 2, (size - height) // 2, width, height), size)

    def to_photo(self, box) -> list[int]:
        """(4,) box in frame units (0..1, may pass the edges) -> [x0, y0, x1, y1] photo pixels, clipped."""
        rx0, ry0, rx1, ry1 = self.region
        left, top, width, height = self.content
        out = []
        for i, value in enumerate(box):
            pixel = float(value) * self.size
            if i % 2 == 0:
                out.append(min(rx1, max(rx0, rx0 + (pixel - left) / width * (rx1 - rx0))))
            else:
                out.append(min(ry1, max(ry0, ry0 + (pixel - top) / height * (ry1 - ry0))))
        return [round(v) for v in out]


class PhotoEncoder:
    """A loaded model and how it runs: photo bytes -> query input tensor -> unit vector.

    Uploads are shoppers' photos: they get the model's query-side preprocessing and, for an adapted
    model, its query-side head (garment crop included). Kept apart from the index so a hot reload of
    a catalogue built with the same weights reuses it.
    """

    def __init__(self, model: LoadedModel, plan: InferencePlan, tta: str = "auto") -> None:
        if tta not in TTA_MODES:
            raise ValueError(f"test-time augmentation must be one of {TTA_MODES}, got {tta!r}")
        self.model = model
        self.plan = plan
        self.tta_setting = tta
        self.tta = ("flip" if model.model.has_query_head else "none") if tta == "auto" else tta
        self.net = prepare_model(model.model, plan)
        self.preprocessing = model.config.preprocessing          # the catalogue's
        self.query_preprocessing = model.config.query_prep
        self._transform = build_transform(self.query_preprocessing)

    @property
    def checksum(self) -> str:
        return self.model.checksum

    def decode(self, image_bytes: bytes, box: Box | None = None):
        """Decode, crop to `box` if given and preprocess one upload into a (3, H, W) tensor.

        Raises ImageDecodeError for bad bytes and BoxError for a box outside the photo.
        """
        return self.decode_query(image_bytes, box)[0]

    def decode_query(self, image_bytes: bytes, box: Box | None = None):
        """(tensor, QueryFrame, photo): the input tensor, where it lies in the photo, and the decoded
        photo the garment crop is taken from (None for a model that does not locate the garment)."""
        crop_size = crop_source_size(self.preprocessing) if self.locates_garments else None
        if box is None:
            # A model that crops the garment out of the photo decodes it at the crop's resolution
            # (JPEG draft scaling stops there), not just the query's.
            img = load_image(image_bytes, target_size=max(self.query_preprocessing.input_size, crop_size or 0),
                             fit="contain") if crop_size else load_input_image(image_bytes, self.query_preprocessing)
            width, height = img.info.get("source_size", img.size)
            region = (0.0, 0.0, float(width), float(height))
        else:
            # Full-resolution decode: box coordinates are in the photo's own (upright) pixels, and
            # a small box needs all of them.
            img = crop_to_box(load_image(image_bytes), box)
            region = (float(round(box.x0)), float(round(box.y0)), float(round(box.x1)), float(round(box.y1)))
        if crop_size and max(img.size) > crop_size:  # what waits in the batcher's queue stays small
            img = img.resize(fit_inside_size(img.width, img.height, crop_size), Image.BILINEAR, reducing_gap=3.0)
        size = self.query_preprocessing.input_size
        frame = QueryFrame.of(region, fit_inside_size(img.width, img.height, size), size)
        return self._transform(img), frame, (img if crop_size else None)

    @property
    def locates_garments(self) -> bool:
        return self.model.model.locates_garments

    def embed(self, batch) -> np.ndarray:
        """(B, 3, H, W) query tensors -> (B, D) float32 unit vectors, or (B, S, D) for a model that
        sees a query at S scales (each searched, the best kept)."""
        return self.embed_queries(batch)[0]

    def embed_queries(self, batch, photos=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, 3, H, W) query tensors -> ((B, D) unit vectors, (B, 4) garment boxes in frame units or None).

        `photos`: decode_query's photos, one per tensor, to crop a located garment from."""
        return embed_query_batch(self.net, batch, self.plan, flip=self.tta == "flip", photos=photos)
