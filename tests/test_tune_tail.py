"""Tuning the backbone's last blocks on cached trunk activations (model/training/tune_tail.py):
the split is the backbone, training finds what the frozen features confuse, a killed run resumes
where it left off, and the frozen part is never touched."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from model.backbones import get_backbone, split_backbone
from model.training.adapt_fit import pool, top1
from model.training.tune_tail import TuneConfig, TunePairs, tail_maps, train_tail, whitening_sides
from model.training.whitening import fit_whitening


@pytest.mark.parametrize("name, blocks", [("efficientnet-lite0", 1), ("efficientnet-lite0", 3), ("resnet18", 1)])
def test_the_split_chains_back_to_the_backbone_and_shares_its_weights(name, blocks):
    backbone = get_backbone(name).build().eval()
    trunk, tail = split_backbone(backbone, blocks)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tail(trunk(x)), backbone(x))
        next(tail.parameters()).add_(1.0)  # the tail is the backbone's own last blocks, not a copy
        torch.testing.assert_close(tail(trunk(x)), backbone(x))
    trunk_ids = {id(p) for p in trunk.parameters()}
    assert trunk_ids and not trunk_ids & {id(p) for p in tail.parameters()}


@pytest.mark.parametrize("blocks", [0, -1, 16, 99])
def test_a_split_past_the_blocks_there_are_is_refused(blocks):
    with pytest.raises(ValueError, match="blocks"):
        split_backbone(get_backbone("efficientnet-lite0").build(), blocks)


def _toy(noise_seed: int = 0, items: int = 48, views: int = 3):
    """Items whose views carry the item's signal in 4 channels and loud noise in 4 others: a
    frozen 1x1 mixing that blends the two confuses them; a tuned one can drop the noise."""
    signal = np.random.default_rng(0).random((items, 4, 3, 3)).astype(np.float32)
    rng = np.random.default_rng(noise_seed + 1)

    def draw(noise: float) -> np.ndarray:
        return np.concatenate([signal, noise * rng.random((items, 4, 3, 3)).astype(np.float32)], 1)

    catalog = draw(0.0)
    q = np.concatenate([draw(3.0) for _ in range(views)])
    return catalog.astype(np.float16), q.astype(np.float16), np.tile(np.arange(items), views)


def _tail(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    tail = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
    with torch.no_grad():
        tail[1].running_mean.uniform_(-0.1, 0.1)
    return tail.eval()


def _pairs(catalog, q, index) -> TunePairs:
    ones = torch.ones(1, 1, 3, 3)
    return TunePairs(q_trunk=q, q_weights=ones.expand(len(q), 1, 3, 3), q_index=index,
                     cat_trunk=catalog, cat_weights=ones.expand(len(catalog), 1, 3, 3))


def _score(tail, catalog, q, index) -> float:
    """Held-out-style top-1 of fresh views, whitening fitted on the training views, through `tail`."""
    _, fresh_q, fresh_index = _toy(noise_seed=7)  # the same items, views never trained on
    c = pool(tail_maps(tail, catalog, torch.device("cpu")).astype(np.float32), None, 3.0)
    train_q = pool(tail_maps(tail, q, torch.device("cpu")).astype(np.float32), None, 3.0)
    whitening = fit_whitening(train_q, c[index], 8, 0.1, c)
    test_q = pool(tail_maps(tail, fresh_q, torch.device("cpu")).astype(np.float32), None, 3.0)
    return top1(whitening.apply(test_q), fresh_index, whitening.apply(c), np.arange(len(c)))["top1"]


def _init(tail, catalog, q, index):
    c = pool(tail_maps(tail, catalog, torch.device("cpu")).astype(np.float32), None, 3.0)
    qp = pool(tail_maps(tail, q, torch.device("cpu")).astype(np.float32), None, 3.0)
    return fit_whitening(qp, c[index], 8, 0.1, c)


CONFIG = TuneConfig(blocks=1, epochs=6, lr=3e-2, batch_size=32, seed=0)


@pytest.mark.parametrize("refreshes", [1, 3])
def test_tuning_the_tail_finds_what_the_frozen_features_confuse(refreshes):
    catalog, q, index = _toy()
    tail = _tail()
    frozen = copy.deepcopy(tail.state_dict())
    before = _score(tail, catalog, q, index)
    config = replace(CONFIG, bank_refreshes=refreshes)
    report = train_tail(tail, _pairs(catalog, q, index), _init(tail, catalog, q, index), config, 3.0,
                        torch.device("cpu"), progress=False)
    after = _score(tail, catalog, q, index)
    assert after > before + 0.1, (before, after)
    assert report["loss"][-1] < report["loss"][0] and len(report["loss"]) == CONFIG.epochs
    assert not tail.training
    # BatchNorm's statistics stay those of the frozen network.
    for key in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(tail.state_dict()[key], frozen[key])
    assert not torch.equal(tail.state_dict()["0.weight"], frozen["0.weight"])


def test_both_sides_start_as_the_whitening_and_train_apart():
    catalog, q, index = _toy()
    whitening = _init(_tail(), catalog, q, index)
    sides = whitening_sides(whitening)
    x = np.random.default_rng(3).random((5, whitening.projection.shape[1])).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for side in sides.values():
        with torch.no_grad():
            got = torch.nn.functional.normalize(side(torch.from_numpy(unit - whitening.mean.astype(np.float32))), dim=1)
        np.testing.assert_allclose(got.numpy(), whitening.apply(x), atol=1e-5)
    first, second = sides.values()
    with torch.no_grad():
        first.weight.add_(1.0)
    assert not torch.equal(first.weight, second.weight)  # one side's training leaves the other's start


class _KilledAt(np.ndarray):
    """Trunk rows that fail on the n-th batch, as a run killed mid-epoch would."""
    calls = 0
    kill_at = 0

    def __getitem__(self, key):
        if not isinstance(key, slice):
            _KilledAt.calls += 1
            if _KilledAt.calls == _KilledAt.kill_at:
                raise KeyboardInterrupt("killed")
        return np.asarray(super().__getitem__(key))


def test_a_killed_tuning_resumes_after_its_last_finished_epoch(tmp_path):
    catalog, q, index = _toy()
    whole = _tail()
    init = _init(whole, catalog, q, index)
    train_tail(whole, _pairs(catalog, q, index), init, CONFIG, 3.0, torch.device("cpu"), progress=False)

    state = tmp_path / "tune.pt"
    killed = _tail()
    steps = -(-len(index) // CONFIG.batch_size)
    _KilledAt.calls, _KilledAt.kill_at = 0, 2 * steps + 2  # in the third epoch
    with pytest.raises(KeyboardInterrupt):
        train_tail(killed, _pairs(catalog, q.view(_KilledAt), index), init, CONFIG, 3.0, torch.device("cpu"),
                   state_path=state, progress=False)
    assert torch.load(state, weights_only=True)["epoch"] == 2
    resumed = _tail()
    report = train_tail(resumed, _pairs(catalog, q, index), init, CONFIG, 3.0, torch.device("cpu"),
                        state_path=state, progress=False)
    assert len(report["loss"]) == CONFIG.epochs
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


@pytest.mark.parametrize("batch_size, steps", [(144, 1), (72, 2), (16, 9), (15, 10), (14, 11)])
def test_tuning_runs_whatever_its_number_of_steps(batch_size, steps):
    catalog, q, index = _toy()  # 144 views
    config = replace(CONFIG, epochs=1, batch_size=batch_size)
    assert -(-len(index) // batch_size) == steps
    tail = _tail()
    report = train_tail(tail, _pairs(catalog, q, index), _init(tail, catalog, q, index), config, 3.0,
                        torch.device("cpu"), progress=False)
    assert len(report["loss"]) == 1 and np.isfinite(report["loss"][0])


class _CountsBankPasses(np.ndarray):
    """Catalogue trunk rows that count the bank's passes over them (its reads are slices from row 0)."""
    passes = 0

    def __getitem__(self, key):
        if isinstance(key, slice) and not key.start:
            _CountsBankPasses.passes += 1
        return np.asarray(super().__getitem__(key))


@pytest.mark.parametrize("refreshes, passes", [(1, 1), (2, 2), (5, 5), (50, 5)])
def test_the_memory_bank_is_recomputed_as_often_as_asked(refreshes, passes):
    catalog, q, index = _toy()
    tail = _tail()
    config = replace(CONFIG, epochs=2, bank_refreshes=refreshes)  # 5 steps an epoch: at most 5 refreshes
    assert -(-len(index) // config.batch_size) == 5
    _CountsBankPasses.passes = 0
    train_tail(tail, _pairs(catalog.view(_CountsBankPasses), q, index), _init(tail, catalog, q, index), config, 3.0,
               torch.device("cpu"), progress=False)
    assert _CountsBankPasses.passes == 2 * passes


@pytest.mark.parametrize("kwargs", [dict(epochs=0), dict(lr=0.0), dict(lr=2.0), dict(blocks=0), dict(batch_size=1),
                                    dict(bank_refreshes=0)])
def test_nonsense_tuning_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        TuneConfig(**kwargs)
