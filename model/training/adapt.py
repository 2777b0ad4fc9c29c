"""`python -m model adapt`: a trained embedder without a GPU.

The backbone's feature maps of the catalogue and of shoppers' views (synthesised from the shop
photos, or real ones) are computed once into a resumable cache (`--box-views` sets skip the frame
pass: cropped at their mask's box, adapt_data.MaskBoxCrops); a head is fitted on the cache in
seconds: the foreground net, the garment crop of the query side, foreground-weighted GeM, learned
whitening and per-side residual heads. Then (EfficientNet-Lite: by default) the backbone's last
blocks are tuned on the trunk activations the passes kept and the projection refitted on its
features; the tuned model ships if it finds held-out items better. The output is an ordinary
checkpoint that the indexer and the service load like any other.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .adapt_cache import TrunkAndMaps, catalog_cache, default_cache_dir, encode_crops, encode_rows, rows_hash
from .adapt_data import MASK_BOX_JITTER, MaskBoxCrops, RowDataset, catalog_rows, view_rows, view_synthesizers
from .adapt_context import held_out_context
from .adapt_fit import Projection, fit_foreground_on_parts, fit_projection, held_out_items, pool_part
from ..adapted_head import BOX_RULE, garment_boxes
from ..backbones import split_backbone
from ..batch_size import AUTO, describe_batch_size, parse_batch_size, resolve_batch_size
from ..checkpoint import build_from_backbone, save_checkpoint, weights_checksum
from ..cpu_runtime import DECODE_PRIORITY_CHOICES
from ..config import MAX_CONTEXT_WIDEN, MAX_FRAME_WEIGHT, AdapterConfig, EmbedderConfig
from .data import read_data
from ..embedder import Embedder
from .feature_cache import CachePart, fingerprint_hash, read_parts
from .tune_tail import TuneConfig, build_pairs, pooled_through_tail, train_tail, write_tail_maps
from ..inference import plan_inference, prepare_model, resolve_device

log = logging.getLogger("snap2shop.adapt")

HEADS = ("auto", "whiten", "residual")
LITE_TUNE_BLOCKS = 4  # the default of --tune-blocks for EfficientNet-Lite (AdaptConfig.tune_blocks)


@dataclass
class AdaptConfig:
    data: Path
    format: str
    out: Path
    split_csv: Path | None = None
    crop: bool = True
    backbone: str = "efficientnet-lite0"
    weights: str = "imagenet"
    input_size: int | None = None   # catalogue side; None: the backbone's own
    # Shoppers' photos are seen at query_size to find the garment (its crop is at input_size); the
    # synthesised training views at view_size. Measured (README, "Adapt"): a head fitted on 320 px
    # views finds garments better at 384 px (+0.01 to +0.03 top-1 on three recipes of four), while
    # views at 384 px would cost 1.44x their encoding time, the longest stage.
    query_size: int = 384
    view_size: int = 320
    views: int = 2                  # synthesised views per item (catalog format)
    # Of those, the last box_views sets are cropped at their mask's box (MaskBoxCrops): no frame pass.
    box_views: int = 0
    # View set n is drawn in style n mod len (synthesis.VIEW_STYLES). "night" (a dim scene) in every
    # other set: adapted on the whole catalogue it gained top-1 on six query recipes of seven against
    # "default" alone, on `train` items it moved top-1 within the spread and top-20 up on all seven
    # (README "A dim scene"). "company" is not a default: adapted on a whole catalogue it lost on
    # five query recipes of six (README "Company in the scene").
    view_styles: tuple[str, ...] = ("default", "night")
    cache: Path | None = None
    device: str = "auto"
    batch_size: int | str = AUTO    # or a number: see batch_size.py
    workers: int = 2
    # The workers that decode and synthesise: "idle" runs them only on CPU time the model leaves
    # (cpu_runtime.yield_cpu_to_others): 384 views encoded in 0.89 of the wall time of normal ones
    # (whole process, medians of 4 pairs; OpenMP's threads no longer wait on a worker that holds a
    # core). "auto" is idle when other processes leave over half the cores idle as a pass starts (no
    # job that they would starve behind), else normal.
    decode_priority: str = "auto"
    dim: int = 512
    head: str = "auto"
    foreground: bool = True
    locate: bool = True
    crop_margin: float = 0.1
    # The query side also embeds the garment box widened this much (AdapterConfig.context_widen);
    # shipped unless the held-out items find their shop photos worse with it. 1.0: off.
    context_widen: float = 1.4
    # ... and the whole frame's embedding with this weight (AdapterConfig.frame_weight), on the same
    # condition. 0: off.
    frame_weight: float = 0.5
    max_cells: int = 300_000
    shard_rows: int = 256           # rows per cache shard: what a killed run can lose
    # Blocks of the backbone to tune on the cached trunk activations (tune_tail.py). None: the
    # EfficientNet-Lite backbones' last four (all on the 7x7 grid, so their trunk activations are
    # 192 channels a row as for one; measured, README "Adapt": held-out top-1 0.712 with one block,
    # 0.718 with two, 0.754 with four, for 4.5 more CPU minutes), none for the others (unmeasured,
    # and a ResNet's trunk activations are 2048 channels a row on disk).
    tune_blocks: int | None = None
    tune_epochs: int = 2
    tune_lr: float = 3e-5
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.views < 1 or self.views > 64:
            raise ValueError(f"--views must be between 1 and 64, got {self.views}")
        if not 0 <= self.box_views < self.views or (self.box_views and not self.locate):
            raise ValueError(f"--box-views must be from 0 to --views - 1 ({self.views - 1}) and needs the garment "
                             f"crop (no --no-locate), got {self.box_views}")
        parse_batch_size(self.batch_size, "--batch-size")
        if self.decode_priority not in DECODE_PRIORITY_CHOICES:
            raise ValueError(f"--decode-priority must be one of {DECODE_PRIORITY_CHOICES}, "
                             f"got {self.decode_priority!r}")
        if self.workers < 0 or self.dim < 2 or self.shard_rows < 1:
            raise ValueError("--shard-rows must be >= 1, --workers >= 0 and --dim >= 2")
        from ..synthesis import VIEW_STYLES

        self.view_styles = tuple(self.view_styles)
        unknown = [s for s in self.view_styles if s not in VIEW_STYLES]
        if unknown or not self.view_styles:
            raise ValueError(f"--view-styles takes names from {sorted(VIEW_STYLES)}, "
                             f"got {','.join(self.view_styles)!r}")
        if self.head not in HEADS:
            raise ValueError(f"--head must be one of {HEADS}, got {self.head!r}")
        if not all(64 <= size <= 1024 for size in (self.query_size, self.view_size, self.input_size or 64)):
            raise ValueError("--query-size, --view-size and --input-size must be between 64 and 1024 pixels")
        if self.locate and not self.foreground:
            raise ValueError("--locate needs the foreground head (drop --no-foreground)")
        if not 1 <= self.context_widen <= MAX_CONTEXT_WIDEN:
            raise ValueError(f"--context-widen must be between 1 (off) and {MAX_CONTEXT_WIDEN:g}, "
                             f"got {self.context_widen}")
        if not 0 <= self.frame_weight <= MAX_FRAME_WEIGHT:
            raise ValueError(f"--frame-weight must be between 0 (off) and {MAX_FRAME_WEIGHT:g}, "
                             f"got {self.frame_weight}")
        if self.tune_blocks is not None and self.tune_blocks < 0:
            raise ValueError(f"--tune-blocks must be 0 (no tuning) or more, got {self.tune_blocks}")
        TuneConfig(blocks=1, epochs=self.tune_epochs, lr=self.tune_lr)  # its own checks
        if Path(self.out).suffix != ".safetensors":
            raise ValueError(f"--out must name a .safetensors file, got {self.out}")


def adapt(config: AdaptConfig) -> Path:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(config.out)
    if not out.parent.exists():
        raise ValueError(f"the folder of --out ({out.parent}) does not exist")
    data = read_data(config.format, config.data, split_csv=config.split_csv, crop=config.crop)
    train = data.split("train")
    if not train.shop():
        raise ValueError(f"{config.data}: no shop photos of 'train' items to adapt on")
    synthesised = not train.consumer()  # catalog data: views are synthesised from the shop photos

    model = build_from_backbone(config.backbone, config.weights)
    prep = model.config.preprocessing
    if config.input_size:
        prep = replace(prep, input_size=config.input_size)
    query_prep = replace(prep, input_size=config.query_size)
    view_prep = replace(prep, input_size=config.view_size)  # the training views' frames
    backbone_sum = weights_checksum(model.backbone)
    plan = plan_inference(resolve_device(config.device))
    # From here on the number the passes run at; the report records it.
    batch_size = resolve_batch_size(config.batch_size, plan.device)
    log.info("backbone passes in batches of %s", describe_batch_size(config.batch_size, batch_size, plan.device))
    config = replace(config, batch_size=batch_size)
    backbone = prepare_model(model.backbone, plan)
    tune_blocks = _tune_blocks(config)
    keeping = backbone  # the catalogue's and crops' passes: with the trunk activations when tuning
    if tune_blocks:
        trunk, tail = split_backbone(model.backbone, tune_blocks)
        keeping = prepare_model(TrunkAndMaps(trunk, tail), plan)
    cache_root = Path(config.cache) if config.cache else default_cache_dir()
    base = {"backbone": config.backbone, "backbone_sha256": backbone_sum}

    shop_photos = data.shop()
    cat_rows = catalog_rows(shop_photos)
    cat_part = catalog_cache(cache_root, config.backbone, backbone_sum, prep, shop_photos, config.shard_rows)
    t0 = time.perf_counter()
    encode_rows(cat_part, RowDataset(cat_rows, prep), keeping, plan, config.batch_size, config.workers,
                config.progress, "catalogue", _trunk_part(cat_part, tune_blocks), config.decode_priority)
    timings["catalog_s"] = time.perf_counter() - t0

    synthesizers = [None]
    if synthesised:
        synthesizers = view_synthesizers(config.view_styles, config.views, train)
        view_sets = [view_rows(train.shop_by_item(), n) for n in range(config.views)]
    else:
        view_sets = [catalog_rows(train.consumer())]
    v_rows = [row for rows in view_sets for row in rows]
    located_sets = len(view_sets) - (config.box_views if synthesised else 0)  # the rest: MaskBoxCrops
    view_parts = []
    t0 = time.perf_counter()
    for n, (rows, synthesizer) in enumerate(zip(view_sets[:located_sets], synthesizers)):
        synth_desc = synthesizer.describe() if synthesizer else None
        fingerprint = base | {"prep": view_prep.to_dict(), "rows": rows_hash(rows), "synth": synth_desc}
        part = CachePart(cache_root, "views", fingerprint, len(rows), config.shard_rows).open()
        # Without the garment crop the views themselves are the queries: their pass keeps the trunk.
        view_trunk = None if config.locate else _trunk_part(part, tune_blocks)
        encode_rows(part, RowDataset(rows, view_prep, synthesizer, keep_frame=True),
                    backbone if view_trunk is None else keeping, plan, config.batch_size, config.workers,
                    config.progress, f"shopper views {n + 1}/{len(view_sets)}" if synthesised else "shopper photos",
                    view_trunk, config.decode_priority)
        view_parts.append(part)
    timings["views_s"] = time.perf_counter() - t0
    box_parts = []
    t0 = time.perf_counter()
    for n in range(located_sets, len(view_sets)):
        rows, synthesizer = view_sets[n], synthesizers[n]
        fingerprint = base | {"prep": prep.to_dict(), "frame_size": config.query_size, "rows": rows_hash(rows),
                              "synth": synthesizer.describe(), "box_rule": BOX_RULE, "margin": config.crop_margin,
                              "jitter": list(MASK_BOX_JITTER)}
        part = CachePart(cache_root, "boxcrops", fingerprint, len(rows), config.shard_rows).open()
        encode_rows(part, MaskBoxCrops(rows, prep, synthesizer, config.query_size, config.crop_margin, MASK_BOX_JITTER),
                    keeping, plan, config.batch_size, config.workers, config.progress,
                    f"mask-box views {n + 1}/{len(view_sets)}", _trunk_part(part, tune_blocks), config.decode_priority)
        box_parts.append(part)
    if box_parts:
        timings["box_views_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cat_info = cat_part.read(["ok", "has_mask", "error"])
    view_info = read_parts(view_parts + box_parts, ["ok", "has_mask", "error"])
    skipped = sorted({str(e) for e in np.concatenate([cat_info["error"], view_info["error"]]) if e})
    for line in skipped[:20]:
        log.warning("skipped: %s", line)
    foreground = None
    if config.foreground:
        # Where the product is is learnt from the views that show it alone: taught on views with
        # company too, the head found small garments worse (bench_adapt `small` 0.493 against 0.583
        # top-1; README "Company in the scene"). The embedding still learns from every set.
        alone = [part for part, synth in zip(view_parts, synthesizers) if not getattr(synth, "companions", ())]
        foreground = fit_foreground_on_parts(cat_part, alone or view_parts, config.max_cells, config.seed)
    timings["foreground_s"] = time.perf_counter() - t0

    adapter = AdapterConfig(dim=config.dim, foreground=config.foreground, locate=config.locate,
                            crop_margin=config.crop_margin)
    t0 = time.perf_counter()
    query_parts = view_parts
    if config.locate:
        fg_sum = weights_checksum(foreground)

        def locate(maps: torch.Tensor) -> torch.Tensor:
            return garment_boxes(torch.sigmoid(foreground(maps)), config.crop_margin)

        query_parts = []
        for part in view_parts:
            fingerprint = {"views": part.dir.name, "foreground": fg_sum, "box_rule": BOX_RULE,
                           "margin": config.crop_margin, "prep": prep.to_dict()}
            crop_part = CachePart(cache_root, "crops", fingerprint, part.rows, config.shard_rows).open()
            encode_crops(crop_part, part, locate, keeping, plan, view_prep, prep.input_size,
                         config.batch_size, config.progress, _trunk_part(crop_part, tune_blocks))
            query_parts.append(crop_part)
    query_parts = query_parts + box_parts
    timings["crops_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cat_pooled = pool_part(cat_part, foreground, adapter.gem_p)
    q_pooled = np.concatenate([pool_part(part, foreground, adapter.gem_p) for part in query_parts])
    train_items = set(train.items())
    first_photo: dict[str, int] = {}
    for i, photo in enumerate(shop_photos):
        if photo.item_id in train_items and cat_info["ok"][i]:
            first_photo.setdefault(photo.item_id, i)
    c_items = np.array(sorted(first_photo))
    c_rows = np.array([first_photo[i] for i in c_items], np.int64)
    q_ok = view_info["ok"]
    v_items = np.array([r.photo.item_id for r in v_rows])
    projection = fit_projection(q_pooled[q_ok], v_items[q_ok], cat_pooled[c_rows], c_items, config.dim, config.head,
                                seed=config.seed)
    timings["fit_s"] = time.perf_counter() - t0

    tuning = None
    if tune_blocks:
        frozen_tail = copy.deepcopy(tail.state_dict())
        held = held_out_items(len(c_items), seed=config.seed)  # those fit_projection chooses the head on
        cat_trunk = _trunk_part(cat_part, tune_blocks)
        q_trunks = [_trunk_part(part, tune_blocks) for part in query_parts]
        pairs, use = build_pairs(cat_trunk, q_trunks, query_parts, cat_part, foreground, c_rows, c_items, v_items,
                                 q_ok, held)
        init = fit_projection(q_pooled[use], v_items[use], cat_pooled[c_rows[~held]], c_items[~held], config.dim,
                              "whiten", seed=config.seed).whitening
        tune_config = TuneConfig(blocks=tune_blocks, epochs=config.tune_epochs, lr=config.tune_lr, seed=config.seed)
        state_key = {"catalog": cat_part.dir.name, "queries": [part.dir.name for part in query_parts],
                     "foreground": weights_checksum(foreground) if foreground else None,
                     "items": fingerprint_hash(list(c_items[~held])),
                     "dim": config.dim, "tune": asdict(tune_config)}
        t0 = time.perf_counter()
        tuning = train_tail(tail, pairs, init, tune_config, adapter.gem_p, plan.device,
                            cache_root / f"tune-{fingerprint_hash(state_key)}.pt", config.progress)
        del pairs
        timings["tune_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # The tuned backbone's catalogue maps: the projection's refit reads them, and so can `indexer build`.
        tuned_part = catalog_cache(cache_root, config.backbone, weights_checksum(model.backbone), prep, shop_photos,
                                   config.shard_rows).open()
        write_tail_maps(cat_part, cat_trunk, tuned_part, tail, plan.device)
        tuned_cat = pool_part(tuned_part, foreground, adapter.gem_p)
        tuned_q = np.concatenate([pooled_through_tail(part, tail, foreground, adapter.gem_p, plan.device)
                                  for part in q_trunks])
        tuned = fit_projection(tuned_q[q_ok], v_items[q_ok], tuned_cat[c_rows], c_items, config.dim, config.head,
                               seed=config.seed)
        timings["refit_s"] = time.perf_counter() - t0
        frozen_val, tuned_val = _held_out_top1(projection), _held_out_top1(tuned)
        keep_tuned = frozen_val is None or tuned_val is None or tuned_val > frozen_val
        tuning |= {"held_out_top1": {"frozen": frozen_val, "tuned": tuned_val},
                   "shipped": "tuned" if keep_tuned else "frozen", "frozen_projection": projection.validation}
        log.info("tuned backbone: held-out top-1 %s (frozen %s): ships the %s one", tuned_val, frozen_val,
                 tuning["shipped"])
        if keep_tuned:
            projection = tuned
        else:
            tail.load_state_dict(frozen_tail)
            tuned_part.remove()

    context, widen, frame_weight = None, 1.0, 0.0
    if config.locate and (config.context_widen != 1.0 or config.frame_weight):
        t0 = time.perf_counter()
        tuned_ships = tuning is not None and tuning["shipped"] == "tuned"
        ship_q, ship_cat = (tuned_q, tuned_cat) if tuned_ships else (q_pooled, cat_pooled)
        context, widen, frame_weight = held_out_context(
            config, view_parts, locate, backbone, plan, view_prep, prep, cache_root, weights_checksum(model.backbone),
            fg_sum, foreground, adapter.gem_p, projection, ship_q, v_items, q_ok, ship_cat[c_rows], c_items)
        timings["context_s"] = time.perf_counter() - t0

    adapter = replace(adapter, dim=projection.whitening.projection.shape[0], residual=projection.residuals is not None,
                      context_widen=widen, frame_weight=frame_weight)
    embed_config = EmbedderConfig(backbone=config.backbone, preprocessing=prep,
                                  query_preprocessing=query_prep, adapter=adapter)
    adapted = _assemble(embed_config, model, foreground, projection)
    timings["total_s"] = time.perf_counter() - started
    report = {"data": str(config.data), "format": config.format, "split_csv": str(config.split_csv or ""),
              "cache": str(cache_root.resolve()), "batch_size": config.batch_size,
              "decode_priority": config.decode_priority,
              "catalog_photos": len(cat_rows), "train_items": len(c_items), "views": len(v_rows),
              "views_per_item": config.views if synthesised else None,
              "box_views": config.box_views if synthesised else None,
              "view_styles": list(config.view_styles) if synthesised else None, "skipped": skipped,
              "projection": projection.validation, "tuning": tuning, "context": context,
              "timings": {k: round(v, 1) for k, v in timings.items()}}
    save_checkpoint(adapted, out, extra_metadata={"adapt": report})
    out.with_name(out.stem + ".adapt.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("adapted in %.1f min: %s", timings["total_s"] / 60, report["timings"])
    return out


def _trunk_part(part: CachePart, blocks: int) -> CachePart | None:
    """Where the trunk activations (below the last `blocks` blocks) of a part's rows are kept."""
    if not blocks:
        return None
    return CachePart(part.dir.parent, "trunk", {"of": part.dir.name, "blocks": blocks}, part.rows,
                     part.shard_size).open()


def _tune_blocks(config: AdaptConfig) -> int:
    if config.tune_blocks is not None:
        return config.tune_blocks
    return LITE_TUNE_BLOCKS if config.backbone.startswith("efficientnet-lite") else 0


def _held_out_top1(projection: Projection) -> float | None:
    """The shipped head's top-1 on the held-out items (None: fit_projection held none out)."""
    scores = [projection.validation.get(key, {}).get("top1") for key in ("val_whiten", "val_residual")]
    scores = [s for s in scores if s is not None]
    return max(scores) if scores else None


def _assemble(config: EmbedderConfig, source: Embedder, foreground, projection) -> Embedder:
    model = Embedder(config)
    model.backbone.load_state_dict(source.backbone.state_dict())
    head = model.adapter
    with torch.no_grad():
        if foreground is not None:
            head.foreground.load_state_dict(foreground.state_dict())
        head.mean.copy_(torch.from_numpy(projection.whitening.mean))
        head.whitening.copy_(torch.from_numpy(projection.whitening.projection))
        if projection.residuals is not None:
            for side, (weight, bias) in projection.residuals.items():
                head.residuals[side].weight.copy_(torch.from_numpy(weight))
                head.residuals[side].bias.copy_(torch.from_numpy(bias))
    return model.eval()


__all__ = ["AdaptConfig", "adapt"]
