"""The frozen backbone's passes of `adapt`, each into a resumable cache part.

1. `encode_rows`: photos or views -> feature maps (+ the garment mask on the map's grid, and for
   views the letterboxed frame), through a DataLoader, in batches, with a progress bar.
2. `encode_crops`: each cached view frame cropped to the garment box that the fitted foreground
   head reads off its cached map (exactly what the query side does at serving time) -> the crop's
   feature map at the catalogue's input size.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .adapt_data import frames_to_tensor
from ..adapted_head import crop_boxes
from ..config import Preprocessing
from .feature_cache import CachePart
from ..inference import InferencePlan, inference_context, on_device

log = logging.getLogger("snap2shop.adapt")

def run_backbone(backbone: torch.nn.Module, images: torch.Tensor, plan: InferencePlan) -> torch.Tensor:
    with inference_context(plan):
        return backbone(on_device(images, plan)).float()


def _collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def encode_rows(part: CachePart, dataset: Dataset, backbone: torch.nn.Module, plan: InferencePlan,
                batch_size: int, workers: int, progress: bool, desc: str) -> None:
    """Fill the part's missing shards with the backbone's maps of `dataset`'s rows."""
    from tqdm import tqdm

    missing = part.missing()
    if not missing:
        log.info("%s: all %d rows cached in %s", desc, part.rows, part.dir)
        return
    indices = [i for shard in missing for i in part.shard_rows(shard)]
    log.info("%s: %d of %d rows to encode (cache %s)", desc, len(indices), part.rows, part.dir)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, pin_memory=plan.device.type == "cuda",
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    pending: dict[str, list] = {}
    shard_iter = iter(missing)
    shard = next(shard_iter)
    need = len(part.shard_rows(shard))
    with tqdm(total=len(indices), desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
        for batch in loader:
            maps = run_backbone(backbone, batch["tensor"], plan)
            grid = F.adaptive_avg_pool2d(batch["mask"][:, None].float().to(maps.device) / 255, maps.shape[-2:])[:, 0]
            rows = {"maps": maps.half().cpu().numpy(), "mask_grid": grid.half().cpu().numpy(),
                    "has_mask": np.asarray(batch["has_mask"], bool), "ok": np.asarray(batch["ok"], bool),
                    "error": np.asarray(batch["error"], dtype=str), "sha256": np.asarray(batch["sha256"], dtype=str)}
            if "frame" in batch:
                rows |= {"frame": batch["frame"].numpy(), "content": batch["content"].numpy()}
            for key, value in rows.items():
                pending.setdefault(key, []).append(value)
            bar.update(len(batch["ok"]))
            while shard is not None and sum(len(v) for v in pending["ok"]) >= need:
                joined = {k: np.concatenate(v) for k, v in pending.items()}
                part.write(shard, {k: v[:need] for k, v in joined.items()})
                pending = {k: [v[need:]] for k, v in joined.items()}
                shard = next(shard_iter, None)
                need = len(part.shard_rows(shard)) if shard is not None else 0


def encode_crops(part: CachePart, views: CachePart, locate: Callable[[torch.Tensor], torch.Tensor],
                 backbone: torch.nn.Module, plan: InferencePlan, query_prep: Preprocessing, crop_size: int,
                 batch_size: int, progress: bool) -> None:
    """Fill `part` with crop maps of the cached view frames, cropped where `locate` (maps -> boxes) says."""
    from tqdm import tqdm

    missing = part.missing()
    if not missing:
        log.info("crops: all %d rows cached in %s", part.rows, part.dir)
        return
    with tqdm(total=sum(len(part.shard_rows(s)) for s in missing), desc="garment crops", unit="img",
              disable=not progress, smoothing=0.1) as bar:
        for shard in missing:
            span = part.shard_rows(shard)
            cached = views.read(["maps", "frame", "content"], np.arange(span.start, span.stop))
            maps_out, boxes_out = [], []
            for start in range(0, len(span), batch_size):
                stop = start + batch_size
                with torch.inference_mode():
                    boxes = locate(torch.from_numpy(cached["maps"][start:stop]).float())
                images = frames_to_tensor(cached["frame"][start:stop], cached["content"][start:stop], query_prep)
                crops = crop_boxes(images, boxes, crop_size)
                maps_out.append(run_backbone(backbone, crops, plan).half().cpu().numpy())
                boxes_out.append(boxes.numpy().astype(np.float32))
                bar.update(len(images))
            part.write(shard, {"maps": np.concatenate(maps_out), "boxes": np.concatenate(boxes_out)})
