"""Beyond a head, still on a CPU: tuning the backbone's last blocks on cached trunk activations.

adapt's catalogue and garment-crop passes kept the frozen trunk's activations (adapt_cache's
`TrunkAndMaps`), the views fixed in advance, so an epoch costs only the last blocks: here they
(and what follows them) train with InfoNCE, each view against its item's catalogue photo and a
memory bank of every other training item's, through foreground-weighted GeM (the weights the frozen
model's foreground head reads off the frozen maps) and one linear projection per side that starts
as the frozen features' whitening. BatchNorm statistics stay frozen: batches of one domain would
drag them off the catalogue's. The held-out items that choose the head are never trained on.

Measured (README, "Adapt"): one block, 2 epochs at lr 3e-5 lift the held-out top-1 0.658 -> 0.679
and every synthesised recipe of bench_adapt.py; four blocks (adapt's default for EfficientNet-Lite
since 2026-12-07) lift the shipped query side's held-out top-1 from 0.712 (one) to 0.754, and top-1
on each of bench_adapt's six recipes; lr 1e-4 diverged in the second epoch. Refreshing
the memory bank 4 times an epoch (`bank_refreshes`) left the held-out top-1 where it was (0.680
against 0.680) for twice the tuning time, so the bank is refreshed once an epoch.
The loss rises every epoch because the bank goes stale within one (bench_tune_negatives.py), yet
only-consistent negatives (the batch's own, or a frozen catalogue side scored exactly) found
held-out items worse (0.675 against 0.680 with one block, 0.707-0.721 against 0.727 with four).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..adapted_head import SIDES, ForegroundHead, weighted_gem
from .adapt_fit import pool
from .feature_cache import CachePart
from .whitening import Whitening

log = logging.getLogger("snap2shop.adapt")


@dataclass(frozen=True)
class TuneConfig:
    blocks: int = 1
    epochs: int = 2
    lr: float = 3e-5
    batch_size: int = 256
    temperature: float = 0.05
    weight_decay: float = 1e-2
    # Times per epoch the memory bank of catalogue embeddings is recomputed by the tail being
    # tuned (between refreshes its rows are an older tail's). More than once measured no gain
    # (module docstring); kept for that measurement to be repeated at other learning rates.
    bank_refreshes: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.epochs < 1 or self.batch_size < 2 or self.bank_refreshes < 1:
            raise ValueError("tuning needs --tune-blocks >= 1, --tune-epochs >= 1, a batch of at least 2 "
                             "and at least one bank refresh an epoch")
        if not 0 < self.lr < 1 or not self.temperature > 0:
            raise ValueError(f"--tune-lr must be between 0 and 1, got {self.lr}")


@dataclass
class TunePairs:
    """Training views on trunk activations, each against its item's one catalogue row."""
    q_trunk: np.ndarray        # (N, C, h, w) fp16: the garment crops' trunk activations
    q_weights: torch.Tensor    # (N, 1, H, W): foreground weights of their frozen maps
    q_index: np.ndarray        # (N,): the row of cat_trunk showing the view's item
    cat_trunk: np.ndarray      # (M, C, h, w) fp16: one catalogue photo per training item
    cat_weights: torch.Tensor  # (M, 1, H, W)


def foreground_weights(part: CachePart, foreground: ForegroundHead | None,
                       rows: np.ndarray | None = None) -> torch.Tensor:
    """(N, 1, H, W) foreground probabilities of a part's cached maps (of `rows`, in their order);
    without a foreground head, uniform weights."""
    if foreground is None:
        shape = part.read(["maps"], np.arange(min(1, part.rows)))["maps"].shape[-2:]
        return torch.ones(part.rows if rows is None else len(rows), 1, *shape)
    chunks = []
    with torch.inference_mode():
        for shard in range(part.shards):
            span = part.shard_rows(shard)
            maps = part.read(["maps"], np.arange(span.start, span.stop))["maps"]
            chunks.append(torch.sigmoid(foreground(torch.from_numpy(maps).float())))
    weights = torch.cat(chunks)
    return weights if rows is None else weights[torch.from_numpy(np.asarray(rows, np.int64))]


def build_pairs(cat_trunk: CachePart, q_trunks: list[CachePart], query_parts: list[CachePart], cat_part: CachePart,
                foreground: ForegroundHead | None, c_rows: np.ndarray, c_items: np.ndarray, v_items: np.ndarray,
                v_ok: np.ndarray, held: np.ndarray) -> tuple[TunePairs, np.ndarray]:
    """The pairs of the items not `held` out (catalogue row c_rows[i] shows item c_items[i]; view j,
    in the query parts' order, shows v_items[j]), and the mask of the views they use. The trunk
    parts hold the activations of the maps' parts' rows (query_parts, cat_part)."""
    position = {item: i for i, item in enumerate(c_items[~held])}
    use = v_ok & np.array([item in position for item in v_items], bool)
    rows = c_rows[~held]
    q_trunk = np.concatenate([part.read(["trunk"])["trunk"] for part in q_trunks])[use]
    q_weights = torch.cat([foreground_weights(part, foreground) for part in query_parts])[torch.from_numpy(use)]
    pairs = TunePairs(q_trunk=q_trunk, q_weights=q_weights,
                      q_index=np.array([position[item] for item in v_items[use]], np.int64),
                      cat_trunk=cat_trunk.read(["trunk"])["trunk"][rows],
                      cat_weights=foreground_weights(cat_part, foreground, rows))
    return pairs, use


def whitening_sides(init: Whitening) -> torch.nn.ModuleDict:
    """One linear projection per side (SIDES), each starting as the frozen features' whitening."""
    width, dim = init.projection.shape[1], init.projection.shape[0]
    sides = torch.nn.ModuleDict({s: torch.nn.Linear(width, dim, bias=False) for s in SIDES})
    with torch.no_grad():
        for layer in sides.values():
            layer.weight.copy_(torch.from_numpy(init.projection.astype(np.float32)))
    return sides


def train_tail(tail: torch.nn.Module, pairs: TunePairs, init: Whitening, config: TuneConfig, gem_p: float,
               device: torch.device, state_path: Path | None = None, progress: bool = True) -> dict:
    """Train `tail` in place; after each epoch its state goes to `state_path`, where a killed run resumes."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    tail.to(device)
    mean = torch.from_numpy(init.mean.astype(np.float32)).to(device)
    sides = whitening_sides(init).to(device)
    opt = torch.optim.AdamW([*tail.parameters(), *sides.parameters()], lr=config.lr,
                            weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(pairs.q_index) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    # OneCycleLR divides by its warm-up's length less one step: a warm-up of exactly one step (10%
    # of 10 steps) fails with ZeroDivisionError, so such a run warms up over 1.5 steps instead.
    warmup = 0.1 if 0.1 * total_steps != 1 else 0.15
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps, pct_start=warmup)
    report = {"config": asdict(config), "views": int(len(pairs.q_index)), "items": int(len(pairs.cat_trunk)),
              "loss": []}
    start_epoch = 1
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        tail.load_state_dict(state["tail"])
        sides.load_state_dict(state["sides"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        report["loss"], start_epoch = list(state["loss"]), int(state["epoch"]) + 1
        log.info("tuning resumes after epoch %d (%s)", start_epoch - 1, state_path)

    def embed(x: np.ndarray, weights: torch.Tensor, side: str) -> torch.Tensor:
        fmap = tail(torch.from_numpy(x).to(device).float())
        pooled = weighted_gem(fmap, weights.to(device), gem_p)
        return F.normalize(sides[side](F.normalize(pooled, dim=1) - mean), dim=1)

    q_index = torch.from_numpy(pairs.q_index.astype(np.int64))
    for epoch in range(start_epoch, config.epochs + 1):
        tail.train()
        for module in tail.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(q_index))
        refresh_every = math.ceil(steps_per_epoch / config.bank_refreshes)
        losses = []
        with tqdm(total=steps_per_epoch, desc=f"tuning epoch {epoch}/{config.epochs}", unit="step",
                  disable=not progress) as bar:
            for step, s in enumerate(range(0, len(order), config.batch_size)):
                if step % refresh_every == 0:
                    with torch.no_grad():
                        bank = torch.cat([embed(pairs.cat_trunk[b:b + 256], pairs.cat_weights[b:b + 256], "catalog")
                                          for b in range(0, len(pairs.cat_trunk), 256)])
                rows = order[s:s + config.batch_size]
                items, target = torch.unique(q_index[rows], return_inverse=True)
                q = embed(pairs.q_trunk[rows], pairs.q_weights[rows], "query")
                c = embed(pairs.cat_trunk[items.numpy()], pairs.cat_weights[items], "catalog")
                # The batch's own items are scored live (with gradient), every other item from the bank.
                others = (q @ bank.t()).index_fill(1, items.to(device), -1e4)
                logits = torch.cat([q @ c.t(), others], 1) / config.temperature
                loss = F.cross_entropy(logits, target.to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    bank[items.to(device)] = c.detach()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
                bar.update()
        report["loss"].append(round(float(np.mean(losses)), 4))
        log.info("tuning epoch %d: loss %.3f", epoch, report["loss"][-1])
        if state_path is not None:
            tmp = state_path.with_name(state_path.name + ".partial")
            torch.save({"epoch": epoch, "loss": report["loss"], "tail": tail.state_dict(),
                        "sides": sides.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, tmp)
            os.replace(tmp, state_path)
    tail.eval()
    return report


def tail_maps(tail: torch.nn.Module, trunk: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray:
    """(N, C, h, w) trunk activations -> (N, C', H, W) fp16 feature maps of the (tuned) backbone."""
    out = []
    with torch.inference_mode():
        for s in range(0, len(trunk), batch_size):
            out.append(tail(torch.from_numpy(trunk[s:s + batch_size]).to(device).float()).half().cpu().numpy())
    return np.concatenate(out)


def pooled_through_tail(part: CachePart, tail: torch.nn.Module, foreground: ForegroundHead | None, gem_p: float,
                        device: torch.device) -> np.ndarray:
    """(rows, C') foreground-weighted GeM of the tail's maps of a part's cached trunk activations."""
    chunks = []
    for shard in range(part.shards):
        span = part.shard_rows(shard)
        trunk = part.read(["trunk"], np.arange(span.start, span.stop))["trunk"]
        chunks.append(pool(tail_maps(tail, trunk, device), foreground, gem_p))
    return np.concatenate(chunks)


def write_tail_maps(source: CachePart, source_trunk: CachePart, target: CachePart, tail: torch.nn.Module,
                    device: torch.device,
                    keep: tuple[str, ...] = ("mask_grid", "has_mask", "ok", "error", "sha256")) -> None:
    """Fill `target` with the tail's maps of `source_trunk`'s activations, and `source`'s `keep` columns."""
    for shard in target.missing():
        rows = np.arange(target.shard_rows(shard).start, target.shard_rows(shard).stop)
        trunk = source_trunk.read(["trunk"], rows)["trunk"]
        target.write(shard, source.read(keep, rows) | {"maps": tail_maps(tail, trunk, device)})


__all__ = ["TuneConfig", "TunePairs", "build_pairs", "foreground_weights", "pooled_through_tail", "tail_maps",
           "train_tail", "whitening_sides", "write_tail_maps"]
