"""Does fine-tuning the backbone's last blocks on cached activations pay, on a CPU? (issue 15, item 4)

Reads an `adapt` cache and the checkpoint adapt made from it, then:
1. runs the frozen trunk (the stem and all blocks but the last N) once over the catalogue photos and
   the cached garment crops of the training views, into a resumable cache part of its own;
2. fits the last N blocks and the head above them (conv head, foreground-weighted GeM with the
   frozen model's weights, a linear projection) with InfoNCE on training items, views fixed in
   advance, the held-out 10% of items left out exactly as `fit_projection` leaves them out;
3. refits the projection (`fit_projection`, head auto) on the tuned features and prints the held-out
   top-1 next to the frozen features' (the checkpoint's own report).

    PYTHONPATH=. python bench/bench_tune_tail.py --cache CACHE --model A.safetensors --blocks 1

Measured (README, "Adapt"): held-out top-1 0.658 -> 0.679 for about 15 CPU minutes (9 of them
the trunk pass); at --lr 1e-4 the fit diverged in its second epoch (0.646). `python -m model adapt`
now does this by default (model/training/tune_tail.py, the trunk activations kept by its own
passes); this script stays for sweeping --blocks, --epochs and --lr on an existing frozen cache,
with a held-out score after every epoch.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.adapted_head import crop_boxes, weighted_gem
from model.checkpoint import load_checkpoint
from model.training.adapt_data import (
    RowDataset,
    catalog_rows,
    frames_to_tensor,
    view_rows,
)
from model.training.adapt_fit import fit_projection
from model.training.data import read_data
from model.training.feature_cache import CachePart

log = logging.getLogger("bench_tune_tail")


def parts_by_name(cache: Path, name: str) -> list[CachePart]:
    out = []
    for meta in sorted(cache.glob(f"{name}-*/cache.json")):
        fp = json.loads(meta.read_text())
        shards = sorted(meta.parent.glob("shard-*.npz"))
        with np.load(shards[-1]) as last:
            rows = (len(shards) - 1) * fp["shard_size"] + len(last[next(iter(last.keys()))])
        # A fingerprint's own "rows" (the rows' hash) overrides the count in the stored one.
        own = {k: v for k, v in fp.items() if k not in ("cache_format", "part", "shard_size")}
        if isinstance(own.get("rows"), int):
            own.pop("rows")
        part = CachePart(cache, name, own, rows, fp["shard_size"])
        assert part.dir == meta.parent, meta
        out.append((fp, part))
    return out


class Trunk(torch.nn.Module):
    def __init__(self, net, cut: int) -> None:
        super().__init__()
        self.net, self.cut = net, cut

    def forward(self, x):
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:self.cut]:
            x = block(x)
        return x


class Tail(torch.nn.Module):
    def __init__(self, net, cut: int) -> None:
        super().__init__()
        self.blocks = copy.deepcopy(net._blocks[cut:])
        self.conv_head, self.bn1, self.act = copy.deepcopy(net._conv_head), copy.deepcopy(net._bn1), net._swish

    def forward(self, x):
        for block in self.blocks:
            x = block(x)  # no drop connect: views are few, the regulariser is the frozen trunk
        return self.act(self.bn1(self.conv_head(x)))


def encode_trunk(part: CachePart, batches, trunk) -> None:
    for shard in part.missing():
        span = part.shard_rows(shard)
        outs = []
        for images in batches(span):
            with torch.inference_mode():
                outs.append(trunk(images).half().numpy())
        part.write(shard, {"x": np.concatenate(outs)})
        log.info("%s shard %d/%d", part.dir.name, shard + 1, part.shards)


def freeze_bn(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/fashion-products")
    ap.add_argument("--split-csv", default=None, help="default: DATA/split.csv")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--model", required=True, help="the checkpoint `adapt` made from this cache")
    ap.add_argument("--blocks", type=int, default=1, help="last blocks to tune (the conv head always)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-5, help="1e-4 diverged in the second epoch")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None, help="also write the tuned model (the frozen model's foreground "
                    "head, the projection refitted on all training items) for bench_adapt.py --model")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    model = load_checkpoint(args.model).eval()
    report = json.loads(Path(args.model).with_suffix(".adapt.json").read_text())
    prep, head = model.config.preprocessing, model.adapter
    net = model.backbone.net
    cut = len(net._blocks) - args.blocks
    trunk, tail = Trunk(net, cut).eval(), Tail(net, cut)
    data = read_data("catalog", args.data, split_csv=Path(args.split_csv or Path(args.data) / "split.csv"))
    shop = data.shop()

    (cat_fp, cat_part), = parts_by_name(args.cache, "catalog")
    views = {part.dir.name: (fp, part) for fp, part in parts_by_name(args.cache, "views")}
    # Every view set lists the same items in the same order, so the sets' order does not matter.
    crops = parts_by_name(args.cache, "crops")
    assert cat_part.rows == len(shop)

    base = {"backbone": cat_fp["backbone"], "backbone_sha256": cat_fp["backbone_sha256"], "cut": cut}
    t0 = time.perf_counter()
    cat_in = CachePart(args.cache, "trunk", base | {"of": cat_part.dir.name}, cat_part.rows, 256).open()
    dataset = RowDataset(catalog_rows(shop), prep, shop_masks=False)

    def photo_batches(span):
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(span)), batch_size=16,
                                             num_workers=2, collate_fn=lambda b: torch.stack([i["tensor"] for i in b]))
        yield from loader

    encode_trunk(cat_in, photo_batches, trunk)
    crop_ins = []
    for fp, crop_part in crops:
        view_fp, view_part = views[fp["views"]]
        view_prep = type(prep).from_dict(view_fp["prep"])

        def batches(span, crop_part=crop_part, view_part=view_part, view_prep=view_prep):
            rows = np.arange(span.start, span.stop)
            got = view_part.read(["frame", "content"], rows)
            boxes = torch.from_numpy(crop_part.read(["boxes"], rows)["boxes"])
            for s in range(0, len(rows), 16):
                images = frames_to_tensor(got["frame"][s:s + 16], got["content"][s:s + 16], view_prep)
                yield crop_boxes(images, boxes[s:s + 16], prep.input_size)

        part = CachePart(args.cache, "trunk", base | {"of": crop_part.dir.name}, crop_part.rows, 256).open()
        encode_trunk(part, batches, trunk)
        crop_ins.append((part, crop_part, view_part))
    encode_s = time.perf_counter() - t0

    # The rows and the held-out split exactly as adapt's fit sees them.
    train_items = set(data.split("train").items())
    ok_cat = cat_part.read(["ok"])["ok"]
    first: dict[str, int] = {}
    for i, photo in enumerate(shop):
        if photo.item_id in train_items and ok_cat[i]:
            first.setdefault(photo.item_id, i)
    c_items = np.array(sorted(first))
    c_rows = np.array([first[i] for i in c_items])
    v_items = np.concatenate([[r.photo.item_id for r in view_rows(data.split("train").shop_by_item(), n)]
                              for n in range(len(crop_ins))])
    v_ok = np.concatenate([vp.read(["ok"])["ok"] for _, _, vp in crop_ins])
    position = {item: i for i, item in enumerate(c_items)}
    keep = v_ok & np.array([i in position for i in v_items])
    q_index = np.array([position.get(i, -1) for i in v_items])
    held = np.random.default_rng(args.seed).random(len(c_items)) < 0.1
    q_train = keep & ~held[np.clip(q_index, 0, None)]
    q_held = keep & held[np.clip(q_index, 0, None)]

    x_cat = torch.from_numpy(cat_in.read(["x"])["x"][c_rows])
    x_q = torch.from_numpy(np.concatenate([p.read(["x"])["x"] for p, _, _ in crop_ins]))
    with torch.inference_mode():
        w_cat = torch.cat([head.foreground_prob(torch.from_numpy(m).float())
                           for m in np.array_split(cat_part.read(["maps"], np.sort(c_rows))["maps"], 40)])
        order = np.argsort(np.argsort(c_rows))  # c_rows sorted by item, maps read by row number
        w_cat = w_cat[torch.from_numpy(order)]
        w_q = torch.cat([head.foreground_prob(torch.from_numpy(m).float())
                         for cp in crop_ins for m in np.array_split(cp[1].read(["maps"])["maps"], 30)])
    p = head.config.gem_p

    def pooled(xs, ws, module, grad=False):
        out = []
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            for s in range(0, len(xs), 256):
                out.append(weighted_gem(module(xs[s:s + 256].float()), ws[s:s + 256], p))
        return torch.cat(out)

    def held_score(module) -> dict:
        qp = pooled(x_q[q_train | q_held], w_q[q_train | q_held], module).numpy()
        cp = pooled(x_cat, w_cat, module).numpy()
        items = v_items[q_train | q_held]
        proj = fit_projection(qp, items, cp, c_items, head.config.dim, "auto", seed=args.seed)
        v = proj.validation
        held_score.projection = proj
        return {"val_whiten": v.get("val_whiten", {}).get("top1"), "val_residual": v.get("val_residual", {}).get("top1"),
                "curve": v.get("val_residual_curve")}

    frozen = held_score(tail.eval())
    log.info("frozen tail: %s (checkpoint's report: %s)", frozen, report.get("projection", {}).get("val_residual"))

    # A projection to train through: whitening fitted on the training items' frozen features.
    qp0 = pooled(x_q[q_train], w_q[q_train], tail).numpy()
    cp0 = pooled(x_cat, w_cat, tail).numpy()
    proj0 = fit_projection(qp0, v_items[q_train], cp0[~held], c_items[~held], head.config.dim, "whiten")
    mean = torch.from_numpy(proj0.whitening.mean)
    sides = torch.nn.ModuleDict({s: torch.nn.Linear(1280, proj0.whitening.projection.shape[0], bias=False)
                                 for s in ("query", "catalog")})
    for layer in sides.values():
        layer.weight.data.copy_(torch.from_numpy(proj0.whitening.projection))

    def embed(pooled_x, side):
        return F.normalize(sides[side](F.normalize(pooled_x, dim=1) - mean), dim=1)

    params = [{"params": tail.parameters(), "lr": args.lr}, {"params": sides.parameters(), "lr": args.lr}]
    opt = torch.optim.AdamW(params, weight_decay=1e-2)
    train_rows = np.flatnonzero(q_train)
    train_cat = np.flatnonzero(~held)
    steps = args.epochs * math.ceil(len(train_rows) / args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[args.lr, args.lr], total_steps=steps, pct_start=0.1)
    gen = np.random.default_rng(args.seed)
    curve = []
    for epoch in range(1, args.epochs + 1):
        tail.train()
        freeze_bn(tail)
        with torch.no_grad():
            bank = embed(pooled(x_cat[train_cat], w_cat[train_cat], tail), "catalog")
        bank_pos = {int(r): j for j, r in enumerate(train_cat)}
        t_epoch = time.perf_counter()
        losses = []
        perm = train_rows[gen.permutation(len(train_rows))]
        for s in range(0, len(perm), args.batch):
            rows = perm[s:s + args.batch]
            cat_idx = np.unique(q_index[rows])
            q = embed(weighted_gem(tail(x_q[rows].float()), w_q[rows], p), "query")
            c = embed(weighted_gem(tail(x_cat[cat_idx].float()), w_cat[cat_idx], p), "catalog")
            bank_idx = torch.tensor([bank_pos[int(i)] for i in cat_idx])
            full = bank.clone()
            full[bank_idx] = 0
            logits_live = q @ c.t()
            live = torch.zeros(len(full), dtype=torch.bool)
            live[bank_idx] = True
            logits_bank = (q @ full.t()).masked_fill(live[None], -1e4)  # the live copies stand for them
            logits = torch.cat([logits_live, logits_bank], 1) / args.temperature
            target = torch.from_numpy(np.searchsorted(cat_idx, q_index[rows]))
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                bank[bank_idx] = c.detach()
            losses.append(loss.item())
        tail.eval()
        score = held_score(tail)
        curve.append(score)
        log.info("epoch %d: loss %.3f, %.0f s, held-out %s", epoch, float(np.mean(losses)),
                 time.perf_counter() - t_epoch, score)
    if args.save:
        from model.training.adapt import _assemble

        source = copy.deepcopy(model)
        net = source.backbone.net
        for i, block in enumerate(tail.blocks):
            net._blocks[cut + i].load_state_dict(block.state_dict())
        net._conv_head.load_state_dict(tail.conv_head.state_dict())
        net._bn1.load_state_dict(tail.bn1.state_dict())
        held_score(tail)  # the last epoch's projection, fitted with head auto
        from dataclasses import replace

        from model.checkpoint import save_checkpoint

        proj = held_score.projection
        config = replace(model.config, adapter=replace(model.config.adapter, residual=proj.residuals is not None))
        tuned = _assemble(config, source, head.foreground, proj)
        save_checkpoint(tuned, args.save, extra_metadata={"tune_tail": {"blocks": args.blocks, "lr": args.lr}})
        log.info("wrote %s", args.save)
    print(json.dumps({"blocks": args.blocks, "epochs": args.epochs, "lr": args.lr, "encode_s": round(encode_s),
                      "total_s": round(time.perf_counter() - started), "frozen": frozen, "tuned": curve}, indent=1))


if __name__ == "__main__":
    main()
