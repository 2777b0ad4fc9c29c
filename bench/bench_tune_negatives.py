"""Why does adapt's tuning loss rise every epoch, and does a consistent set of negatives tune better?

adapt tunes the backbone's last blocks with InfoNCE: each view against its item's catalogue photo,
embedded live (with gradient), and every other training item's embedding from a memory bank
refreshed once an epoch (model/training/tune_tail.py). Its loss rises from epoch to epoch (1.68 ->
3.27 with four blocks) while the held-out top-1 after the projection's refit still rises. This
script runs `adapt` on a warm cache with the tuning step swapped for one of:

- `bank`: adapt's own `train_tail`, unchanged (reproduces the report's `tuning.held_out_top1`);
- `batch`: the batch's own catalogue photos as the only negatives, all embedded live: nothing stale;
- `frozen-catalog`: the catalogue side keeps the frozen backbone (its pooled features computed once)
  and only its linear projection trains, so every step scores all training items exactly; the tuned
  blocks embed only the views (a query-side backbone).

then refits the projection on the tuned features exactly as adapt does and prints the held-out
top-1 it chooses the head by. `--probe` also prints, after each epoch, the top-1 and loss of 512
fixed training views against a freshly computed bank (for `bank`, with a copy of train_tail's loop).

    PYTHONPATH=. python bench/bench_tune_negatives.py --variant batch --blocks 1

Measured (README, "Why the tuning loss rises"): the bank goes stale within an epoch; the
alternatives were no better on held-out items.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import model.training.adapt as adapt_module
from model.adapted_head import weighted_gem
from model.training.adapt_fit import fit_projection
from model.training.tune_tail import pooled_through_tail, train_tail, whitening_sides

VARIANTS = ("bank", "batch", "frozen-catalog")


class TuningDone(Exception):
    """Raised after the refit: the rest of adapt (context, checkpoint) is not this benchmark's."""


def tune_variant(variant: str, tail, pairs, init, config, gem_p: float, probe: bool) -> torch.nn.Module:
    """Train `tail` in place as `variant` does; return the module that embeds the catalogue afterwards."""
    frozen = copy.deepcopy(tail).eval()
    torch.manual_seed(config.seed)
    mean = torch.from_numpy(init.mean.astype(np.float32))
    sides = whitening_sides(init)
    opt = torch.optim.AdamW([*tail.parameters(), *sides.parameters()], lr=config.lr,
                            weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(pairs.q_index) / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
                                                pct_start=0.1)

    def pooled(net, x, weights):
        return F.normalize(weighted_gem(net(torch.from_numpy(x).float()), weights, gem_p), dim=1) - mean

    def embed(x, weights, side, net=tail):
        return F.normalize(sides[side](pooled(net, x, weights)), dim=1)

    def catalogue_bank(net=tail):
        if variant == "frozen-catalog":
            return F.normalize(sides["catalog"](cat_features), dim=1)
        return torch.cat([embed(pairs.cat_trunk[b:b + 256], pairs.cat_weights[b:b + 256], "catalog", net)
                          for b in range(0, len(pairs.cat_trunk), 256)])

    q_index = torch.from_numpy(pairs.q_index.astype(np.int64))
    probe_rows = np.random.default_rng(5).choice(len(q_index), min(512, len(q_index)), replace=False)
    with torch.no_grad():
        cat_features = torch.cat([pooled(frozen, pairs.cat_trunk[b:b + 256], pairs.cat_weights[b:b + 256])
                                  for b in range(0, len(pairs.cat_trunk), 256)])

    def probe_score() -> tuple[float, float]:
        with torch.no_grad():
            scores = embed(pairs.q_trunk[probe_rows], pairs.q_weights[probe_rows], "query") @ catalogue_bank().t()
            target = q_index[probe_rows]
            return (round(F.cross_entropy(scores / config.temperature, target).item(), 3),
                    round((scores.argmax(1) == target).float().mean().item(), 3))

    if probe:
        print("probe before tuning (loss, top-1):", probe_score(), flush=True)
    for epoch in range(1, config.epochs + 1):
        for module in tail.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()  # as train_tail: BatchNorm statistics stay the catalogue's
        order = np.random.default_rng([config.seed, epoch]).permutation(len(q_index))
        if variant == "bank":
            with torch.no_grad():
                bank = catalogue_bank()
        losses, started = [], time.perf_counter()
        for s in range(0, len(order), config.batch_size):
            rows = order[s:s + config.batch_size]
            q = embed(pairs.q_trunk[rows], pairs.q_weights[rows], "query")
            if variant == "frozen-catalog":
                loss = F.cross_entropy(q @ catalogue_bank().t() / config.temperature, q_index[rows])
            else:
                items, target = torch.unique(q_index[rows], return_inverse=True)
                c = embed(pairs.cat_trunk[items.numpy()], pairs.cat_weights[items], "catalog")
                logits = q @ c.t()
                if variant == "bank":
                    logits = torch.cat([logits, (q @ bank.t()).index_fill(1, items, -1e4)], 1)
                loss = F.cross_entropy(logits / config.temperature, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if variant == "bank":
                with torch.no_grad():
                    bank[items] = c.detach()
            losses.append(loss.item())
        line = f"epoch {epoch}: loss {np.mean(losses):.3f}, {time.perf_counter() - started:.0f} s"
        print(line + (f", probe (loss, top-1) {probe_score()}" if probe else ""), flush=True)
    tail.eval()
    return frozen if variant == "frozen-catalog" else tail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/fashion-products")
    ap.add_argument("--split-csv", default=None, help="default: DATA/split.csv")
    ap.add_argument("--cache", type=Path, default=None, help="adapt's cache (default: adapt's own default)")
    ap.add_argument("--variant", choices=VARIANTS, default="bank")
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--probe", action="store_true", help="score 512 training views after each epoch")
    args = ap.parse_args()
    if args.variant == "bank" and args.probe:
        print("--probe with --variant bank runs this script's copy of train_tail's loop", flush=True)
    captured: dict = {}
    build_pairs = adapt_module.build_pairs

    def capturing_build_pairs(*pair_args):
        captured["args"] = pair_args
        return build_pairs(*pair_args)

    def swapped_train_tail(tail, pairs, init, config, gem_p, device, state_path=None, progress=True):
        started = time.perf_counter()
        if args.variant == "bank" and not args.probe:
            train_tail(tail, pairs, init, config, gem_p, device, None, progress)
            catalogue_net = tail
        else:
            catalogue_net = tune_variant(args.variant, tail, pairs, init, config, gem_p, args.probe)
        tune_s = time.perf_counter() - started
        cat_trunk, q_trunks, _, _, foreground, c_rows, c_items, v_items, v_ok, _ = captured["args"]
        tuned_q = np.concatenate([pooled_through_tail(part, tail, foreground, gem_p, device) for part in q_trunks])
        tuned_cat = pooled_through_tail(cat_trunk, catalogue_net, foreground, gem_p, device)
        refit = fit_projection(tuned_q[v_ok], v_items[v_ok], tuned_cat[c_rows], c_items, init.projection.shape[0],
                               "auto", seed=config.seed)
        val = refit.validation
        print(json.dumps({"variant": args.variant, "blocks": args.blocks, "epochs": args.epochs, "lr": args.lr,
                          "tune_s": round(tune_s), "held_out_top1": max(val["val_whiten"]["top1"],
                                                                          val.get("val_residual", {}).get("top1", 0)),
                          "val_whiten": val["val_whiten"], "head": val["head"]}), flush=True)
        raise TuningDone

    if args.blocks < 1:
        ap.error("--blocks must be 1 or more: without tuned blocks there is nothing to compare")
    try:
        config = adapt_module.AdaptConfig(data=Path(args.data), format="catalog",
                                          split_csv=Path(args.split_csv or Path(args.data) / "split.csv"),
                                          out=Path("/tmp/bench_tune_negatives.safetensors"), cache=args.cache,
                                          tune_blocks=args.blocks, tune_epochs=args.epochs, tune_lr=args.lr,
                                          progress=False)
    except ValueError as exc:
        ap.error(str(exc))
    adapt_module.build_pairs = capturing_build_pairs
    adapt_module.train_tail = swapped_train_tail
    try:
        adapt_module.adapt(config)
    except TuningDone:
        pass


if __name__ == "__main__":
    main()
