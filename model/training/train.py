"""`python -m model train`: fine-tune the embedder with the triplet loss.

Each epoch writes the checkpoint (usable unchanged by the indexer and the service), a resumable
training state beside it, a JSON-lines metrics log and a loss curve.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..backbones import get_backbone
from ..checkpoint import build_from_backbone, load_checkpoint, save_checkpoint
from .data import RetrievalData, read_data
from ..embedder import Embedder
from ..inference import plan_inference, prepare_model, resolve_device
from .losses import batch_hard_triplet_loss, triplet_loss
from .triplets import (NEGATIVE_STRATEGIES, ItemBatchDataset, TripletDataset, adjacent_negatives,
                       collate_item_batches, hard_negatives)
from .views import View, embed_views

log = logging.getLogger("snap2shop.train")


@dataclass
class TrainConfig:
    data: Path
    format: str
    out: Path
    split_csv: Path | None = None
    crop: bool = True
    backbone: str = "efficientnet-lite0"
    weights: str = "imagenet"
    # Defaults keep the pretrained embedding's geometry at step 0 (no new projection, the seed's max
    # pooling, no BNNeck), so fine-tuning starts from the zero-shot model and only improves on it:
    # measured on fashion-products, 100 CPU steps this way beat zero-shot, while a fresh 256-dim head
    # with GeM + BNNeck fell below it (README, training benchmark). --dim/--pooling/--bnneck opt in.
    dim: int | None = None
    input_size: int | None = None  # None: the backbone's own
    pooling: str = "max"
    bnneck: bool = False
    epochs: int = 10
    batch_size: int = 64  # images per batch (queries + shop photos)
    views_per_item: int = 3  # K query views per item in batch-hard batches
    lr: float = 1e-4
    weight_decay: float = 1e-4
    margin: float = 0.2
    negatives: str = "batch-hard"
    device: str = "auto"
    precision: str = "auto"
    workers: int = 2
    seed: int = 0
    resume: bool = False
    max_steps_per_epoch: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.negatives not in NEGATIVE_STRATEGIES:
            raise ValueError(f"--negatives must be one of {NEGATIVE_STRATEGIES}, got {self.negatives!r}")
        if self.batch_size < 3 or self.epochs < 1 or self.margin <= 0 or self.lr <= 0:
            raise ValueError("batch size must be >= 3, epochs >= 1, margin and lr positive")


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.pt")


def metrics_path(out: Path) -> Path:
    return out.with_name(out.stem + ".metrics.jsonl")


def curve_path(out: Path) -> Path:
    return out.with_name(out.stem + ".loss.png")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: TrainConfig) -> Embedder:
    prep = get_backbone(config.backbone).preprocessing
    if config.input_size:
        prep = replace(prep, input_size=config.input_size)
    return build_from_backbone(config.backbone, config.weights, dim=config.dim, pooling=config.pooling,
                               bnneck=config.bnneck, preprocessing=prep)


def _optimizer(model: Embedder, config: TrainConfig) -> torch.optim.Optimizer:
    # The new head learns from scratch; the pretrained backbone only needs nudging.
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    return torch.optim.AdamW([{"params": backbone, "lr": config.lr}, {"params": rest, "lr": config.lr * 10}],
                             weight_decay=config.weight_decay)


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, total_steps // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _synthesizer(data: RetrievalData):
    if data.consumer():
        return None
    from ..synthesis import ConsumerViewSynthesizer

    return ConsumerViewSynthesizer()


def train(config: TrainConfig) -> Path:
    """Train and return the checkpoint path. Resumes from the state file when config.resume."""
    seed_everything(config.seed)
    data = read_data(config.format, config.data, split_csv=config.split_csv, crop=config.crop)
    train_data = data.split("train")
    synthesizer = _synthesizer(train_data)
    device = resolve_device(config.device)
    plan = plan_inference(device, config.precision)

    model = build_model(config)
    start_epoch, optimizer_state, scheduler_state = 0, None, None
    if config.resume and state_path(config.out).is_file():
        model = load_checkpoint(config.out)
        state = torch.load(state_path(config.out), map_location="cpu", weights_only=True)
        start_epoch, optimizer_state, scheduler_state = state["epoch"], state["optimizer"], state["scheduler"]
        log.info("resuming %s after epoch %d", config.out, start_epoch)
    prep = model.config.preprocessing

    if config.negatives == "batch-hard":
        dataset = ItemBatchDataset(train_data, prep, config.views_per_item, synthesizer, config.seed)
        per_batch = max(2, config.batch_size // (config.views_per_item + 1))
        collate = collate_item_batches
    else:
        dataset = TripletDataset(train_data, prep, synthesizer, config.seed)
        per_batch = max(1, config.batch_size // 3)
        collate = None
    if len(dataset) < 2:
        raise ValueError(f"{config.data}: the train split has {len(dataset)} usable items; need at least 2")
    per_batch = min(per_batch, len(dataset))
    steps_per_epoch = len(dataset) // per_batch
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)

    model.train()
    model = prepare_model(model, plan).train()
    optimizer = _optimizer(model, config)
    scheduler = _schedule(optimizer, steps_per_epoch * config.epochs)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)

    config.out.parent.mkdir(parents=True, exist_ok=True)
    metrics = metrics_path(config.out).open("a" if config.resume else "w", encoding="utf-8")
    log.info("training on %d items (%s negatives), %d steps per epoch, %s", len(dataset), config.negatives,
             steps_per_epoch, plan.describe())
    try:
        for epoch in range(start_epoch, config.epochs):
            dataset.set_epoch(epoch)
            if config.negatives == "adjacent" and epoch == start_epoch:
                dataset.set_negatives(adjacent_negatives(train_data, dataset.items))
            elif config.negatives == "hard":
                dataset.set_negatives(_mine(model, plan, train_data, dataset.items, synthesizer, config, epoch))
            summary = _run_epoch(model, plan, dataset, collate, per_batch, steps_per_epoch, optimizer, scheduler,
                                 config, epoch, metrics)
            save_checkpoint(model, config.out, extra_metadata={"epoch": epoch + 1, "train": _jsonable(config)})
            torch.save({"epoch": epoch + 1, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                       state_path(config.out))
            metrics.write(json.dumps({"event": "epoch", **summary}) + "\n")
            metrics.flush()
            plot_loss_curve(metrics_path(config.out), curve_path(config.out))
            log.info("epoch %d: loss %.4f, %.1f img/s", epoch + 1, summary["loss"], summary["img_per_s"])
    finally:
        metrics.close()
    return config.out


def _run_epoch(model, plan, dataset, collate, per_batch, steps, optimizer, scheduler, config, epoch, metrics) -> dict:
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
    loader = DataLoader(dataset, batch_size=per_batch, shuffle=True, drop_last=True, collate_fn=collate,
                        num_workers=config.workers, generator=generator, pin_memory=plan.device.type == "cuda",
                        persistent_workers=False)
    losses, started, images = [], time.perf_counter(), 0
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress, unit="step")
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        loss, active, n_images = _step(model, plan, batch, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        images += n_images
        losses.append(float(loss.detach()))
        rate = images / (time.perf_counter() - started)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", img_s=f"{rate:.1f}")
        bar.update(1)
        metrics.write(json.dumps({"event": "step", "epoch": epoch + 1, "step": step + 1, "loss": round(losses[-1], 6),
                                  "active_triplets": round(active, 4), "lr": scheduler.get_last_lr()[0],
                                  "img_per_s": round(rate, 2)}) + "\n")
    bar.close()
    wall = time.perf_counter() - started
    return {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"), "steps": len(losses),
            "images": images, "seconds": round(wall, 2), "img_per_s": round(images / wall, 2) if wall else 0.0}


def _step(model, plan, batch, config) -> tuple[torch.Tensor, float, int]:
    with torch.autocast(device_type=plan.device.type, dtype=torch.bfloat16, enabled=plan.bf16):
        if config.negatives == "batch-hard":
            queries, query_labels, shops, shop_labels = batch
            # One forward for both domains, so BatchNorm sees consumer and shop statistics together.
            embeddings = model(_to(torch.cat([queries, shops]), plan))
            q, s = embeddings[: len(queries)], embeddings[len(queries):]
            loss, active = batch_hard_triplet_loss(q, query_labels.to(plan.device), s, shop_labels.to(plan.device),
                                                   config.margin)
            return loss, active, len(queries) + len(shops)
        query, positive, negative = batch
        embeddings = model(_to(torch.cat([query, positive, negative]), plan))
        q, p, n = embeddings.split(len(query))
        loss, active = triplet_loss(q, p, n, config.margin)
        return loss, active, 3 * len(query)


def _to(images: torch.Tensor, plan) -> torch.Tensor:
    images = images.to(plan.device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if plan.channels_last else images


def _mine(model, plan, data: RetrievalData, items: list[str], synthesizer, config: TrainConfig, epoch: int):
    """The paper's negatives: re-embed with the current weights, keep the 25 nearest wrong items."""
    consumer, shop = data.consumer_by_item(), data.shop_by_item()
    rng = random.Random(config.seed * 7919 + epoch)
    queries = [View(rng.choice(consumer[i])) if consumer.get(i) else View(rng.choice(shop[i]), rng.getrandbits(32))
               for i in items]
    shop_photos = [p for i in items for p in shop[i]]
    prep = model.config.preprocessing
    query_embeddings = embed_views(model, plan, queries, prep, synthesizer, workers=config.workers,
                                   progress=config.progress, desc="mining: queries")
    shop_embeddings = embed_views(model, plan, [View(p) for p in shop_photos], prep, workers=config.workers,
                                  progress=config.progress, desc="mining: shop photos")
    return hard_negatives(query_embeddings, items, shop_embeddings, shop_photos)


def plot_loss_curve(metrics_file: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses, epoch_x, epoch_loss = [], [], [], []
    with metrics_file.open(encoding="utf-8") as handle:
        for count, line in enumerate(handle):
            record = json.loads(line)
            if record["event"] == "step":
                steps.append(len(steps) + 1)
                losses.append(record["loss"])
            elif record["event"] == "epoch":
                epoch_x.append(len(steps))
                epoch_loss.append(record["loss"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=0.8, alpha=0.6, label="step loss")
    if epoch_x:
        ax.plot(epoch_x, epoch_loss, "o-", label="epoch mean")
    ax.set_xlabel("step")
    ax.set_ylabel("triplet loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _jsonable(config: TrainConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
