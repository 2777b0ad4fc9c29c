"""The frozen backbone's passes of `adapt`, each into a resumable cache part.

1. `encode_rows`: photos or views -> feature maps (+ the garment mask on the map's grid, and for
   views the letterboxed frame), through a DataLoader, in batches, with a progress bar.
2. `encode_crops`: each cached view frame cropped to the garment box that the fitted foreground
   head reads off its cached map (exactly what the query side does at serving time) -> the crop's
   feature map at the catalogue's input size.

Given a `TrunkAndMaps` backbone and a `trunk_part`, both passes also keep the frozen trunk's
activations there (a part of its own: the maps' cache is the same whether they are kept or not),
which is what tuning the backbone's last blocks trains on (tune_tail.py) without another pass.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .adapt_data import catalog_rows, frames_to_tensor, row_key
from ..adapted_head import crop_boxes
from ..checkpoint import weights_checksum
from ..config import Preprocessing
from ..cpu_runtime import cores_mostly_idle, worker_yielding_to_model
from .data import Photo
from ..embedder import Embedder
from .feature_cache import CachePart
from ..inference import InferencePlan, inference_context, on_device

log = logging.getLogger("snap2shop.adapt")


class TrunkAndMaps(torch.nn.Module):
    """A backbone split as trunk -> tail that returns both the trunk's activations and the maps."""

    def __init__(self, trunk: torch.nn.Module, tail: torch.nn.Module) -> None:
        super().__init__()
        self.trunk, self.tail = trunk, tail

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inner = self.trunk(images)
        return inner, self.tail(inner)


def run_backbone(backbone: torch.nn.Module, images: torch.Tensor, plan: InferencePlan) -> dict[str, np.ndarray]:
    """{"maps": fp16 feature maps} and, for a TrunkAndMaps backbone, {"trunk": fp16 activations}."""
    with inference_context(plan):
        out = backbone(on_device(images, plan))
    if isinstance(out, tuple):
        return {"trunk": out[0].half().cpu().numpy(), "maps": out[1].half().cpu().numpy()}
    return {"maps": out.half().cpu().numpy()}


def _collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def _missing(part: CachePart, trunk_part: CachePart | None) -> list[int]:
    return sorted(set(part.missing()) | set(trunk_part.missing() if trunk_part else ()))


def _write(part: CachePart, trunk_part: CachePart | None, shard: int, rows: dict[str, np.ndarray]) -> None:
    trunk = rows.pop("trunk", None)
    if trunk_part is not None:
        trunk_part.write(shard, {"trunk": trunk})
    part.write(shard, rows)


def encode_rows(part: CachePart, dataset: Dataset, backbone: torch.nn.Module, plan: InferencePlan,
                batch_size: int, workers: int, progress: bool, desc: str, trunk_part: CachePart | None = None,
                decode_priority: str = "normal") -> None:
    """Fill the part's missing shards with the backbone's maps of `dataset`'s rows.

    `decode_priority`: "idle" runs the DataLoader's workers only on CPU time the model leaves
    (cpu_runtime.yield_cpu_to_others); "auto" does so if other processes leave over half the cores
    idle when the pass starts; "normal" as any process."""
    from tqdm import tqdm

    missing = _missing(part, trunk_part)
    if not missing:
        log.info("%s: all %d rows cached in %s", desc, part.rows, part.dir)
        return
    indices = [i for shard in missing for i in part.shard_rows(shard)]
    idle_workers = workers > 0 and (decode_priority == "idle" or (decode_priority == "auto" and cores_mostly_idle()))
    log.info("%s: %d of %d rows to encode (cache %s; workers at %s priority)", desc, len(indices), part.rows,
             part.dir, "idle" if idle_workers else "normal")
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, pin_memory=plan.device.type == "cuda",
                        persistent_workers=False, prefetch_factor=4 if workers else None,
                        worker_init_fn=worker_yielding_to_model if idle_workers else None)
    pending: dict[str, list] = {}
    shard_iter = iter(missing)
    shard = next(shard_iter)
    need = len(part.shard_rows(shard))
    with tqdm(total=len(indices), desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
        for batch in loader:
            rows = run_backbone(backbone, batch["tensor"], plan)
            grid = F.adaptive_avg_pool2d(batch["mask"][:, None].float() / 255, rows["maps"].shape[-2:])[:, 0]
            rows |= {"mask_grid": grid.half().numpy(), "has_mask": np.asarray(batch["has_mask"], bool),
                     "ok": np.asarray(batch["ok"], bool), "error": np.asarray(batch["error"], dtype=str),
                     "sha256": np.asarray(batch["sha256"], dtype=str)}
            if "frame" in batch:
                rows |= {"frame": batch["frame"].numpy(), "content": batch["content"].numpy()}
            for key, value in rows.items():
                pending.setdefault(key, []).append(value)
            bar.update(len(batch["ok"]))
            while shard is not None and sum(len(v) for v in pending["ok"]) >= need:
                joined = {k: np.concatenate(v) for k, v in pending.items()}
                _write(part, trunk_part, shard, {k: v[:need] for k, v in joined.items()})
                pending = {k: [v[need:]] for k, v in joined.items()}
                shard = next(shard_iter, None)
                need = len(part.shard_rows(shard)) if shard is not None else 0


def encode_crops(part: CachePart, views: CachePart, locate: Callable[[torch.Tensor], torch.Tensor],
                 backbone: torch.nn.Module, plan: InferencePlan, query_prep: Preprocessing, crop_size: int,
                 batch_size: int, progress: bool, trunk_part: CachePart | None = None,
                 source_rows: np.ndarray | None = None) -> None:
    """Fill `part` with crop maps of the cached view frames, cropped where `locate` (maps -> boxes) says.

    `source_rows`: the (sorted) view rows the part's rows are crops of; None: every view row."""
    from tqdm import tqdm

    missing = _missing(part, trunk_part)
    if not missing:
        log.info("crops: all %d rows cached in %s", part.rows, part.dir)
        return
    with tqdm(total=sum(len(part.shard_rows(s)) for s in missing), desc="garment crops", unit="img",
              disable=not progress, smoothing=0.1) as bar:
        for shard in missing:
            span = part.shard_rows(shard)
            rows = np.arange(span.start, span.stop)
            cached = views.read(["maps", "frame", "content"], rows if source_rows is None else source_rows[rows])
            outs, boxes_out = [], []
            for start in range(0, len(span), batch_size):
                stop = start + batch_size
                with torch.inference_mode():
                    boxes = locate(torch.from_numpy(cached["maps"][start:stop]).float())
                images = frames_to_tensor(cached["frame"][start:stop], cached["content"][start:stop], query_prep)
                crops = crop_boxes(images, boxes, crop_size)
                outs.append(run_backbone(backbone, crops, plan))
                boxes_out.append(boxes.numpy().astype(np.float32))
                bar.update(len(images))
            _write(part, trunk_part, shard, {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}
                   | {"boxes": np.concatenate(boxes_out)})


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "snap2shop" / "adapt"


def rows_hash(rows) -> str:
    """What identifies a list of rows in a cache fingerprint."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row_key(row).encode() + b"\n")
    return digest.hexdigest()


def _catalog_fingerprint(backbone: str, backbone_sum: str, prep: Preprocessing, rows) -> dict:
    return {"backbone": backbone, "backbone_sha256": backbone_sum, "prep": prep.to_dict(), "rows": rows_hash(rows)}


def catalog_cache(cache_root: Path, backbone: str, backbone_sum: str, prep: Preprocessing,
                  shop_photos: list[Photo], shard_rows: int = 256) -> CachePart:
    """The cache part of these shop photos' feature maps (every split: it is features, not training)."""
    rows = catalog_rows(shop_photos)
    fingerprint = _catalog_fingerprint(backbone, backbone_sum, prep, rows)
    return CachePart(Path(cache_root), "catalog", fingerprint, len(rows), shard_rows).open()


def find_catalog_maps(cache_root: Path, model: Embedder, paths: list[Path]) -> CachePart | None:
    """The complete cached feature maps of exactly these photos (in this order) under this model's
    backbone and catalogue preprocessing, or None. Nothing is created."""
    rows = catalog_rows([Photo(Path(p), "", "shop", "train") for p in paths])
    fingerprint = _catalog_fingerprint(model.config.backbone, weights_checksum(model.backbone),
                                       model.config.preprocessing, rows)
    return CachePart.find(Path(cache_root), "catalog", fingerprint, len(rows))
