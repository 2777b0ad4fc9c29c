"""Mapper stage: photos -> L2-normalised embeddings, in batches, decoding in worker processes."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from model import LoadedModel
from model.batch_size import AUTO, describe_batch_size, resolve_batch_size
from model.inference import InferencePlan, embed_batch, plan_inference, prepare_model
from model.config import Preprocessing
from model.cpu_runtime import DECODE_PRIORITY_CHOICES, worker_yielding_to_model
from model.device_decode import decodable_on_device, decode_jpegs, transform_decoded
from model.preprocessing import ImageDecodeError, build_transform, load_input_image


log = logging.getLogger("snap2shop.indexer")

JPEG_DECODE_CHOICES = ("workers", "device")


class PhotoDataset(Dataset):
    """Decodes and preprocesses one photo; a bad photo yields its error instead of raising,
    so one corrupt file cannot stop a catalogue build.

    With `raw_jpegs`, a JPEG that the model's device can decode is passed on as its bytes instead
    (see model/device_decode.py)."""

    def __init__(self, paths: Sequence[Path], prep: Preprocessing, raw_jpegs: bool = False) -> None:
        self.paths = list(paths)
        self.prep = prep
        self.transform = build_transform(prep)
        self.raw_jpegs = raw_jpegs

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        started = time.perf_counter()
        try:
            data = self.paths[index].read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if self.raw_jpegs and decodable_on_device(data):
                return index, RawJpeg(data), digest, time.perf_counter() - started
            tensor = self.transform(load_input_image(io.BytesIO(data), self.prep))
            return index, tensor, digest, time.perf_counter() - started
        except ImageDecodeError as exc:
            return index, None, str(exc), time.perf_counter() - started
        except OSError as exc:
            return index, None, f"cannot read file: {exc.strerror or exc}", time.perf_counter() - started


@dataclass(frozen=True)
class RawJpeg:
    data: bytes


def _collate(samples):
    # The third field is the photo's sha256 when it decoded, else the reason it did not.
    good = [s for s in samples if isinstance(s[1], torch.Tensor)]
    raw = [(s[0], s[1].data, s[2]) for s in samples if isinstance(s[1], RawJpeg)]
    bad = [(s[0], s[2]) for s in samples if s[1] is None]
    indices = torch.tensor([s[0] for s in good], dtype=torch.long)
    batch = default_collate([s[1] for s in good]) if good else None  # in a worker: straight into shared memory
    digests = [s[2] for s in good]
    decode_seconds = sum(s[3] for s in samples)
    return indices, batch, digests, bad, decode_seconds, raw


def _decode_raw_on_device(raw: list[tuple[int, bytes, str]], prep: Preprocessing, device: torch.device,
                          transform) -> tuple[list[int], list[torch.Tensor], list[str], list[tuple[int, str]]]:
    """The raw JPEGs of a batch decoded on `device`; one that fails there goes through Pillow, which
    either decodes it or says what is wrong with it."""
    indices, tensors, digests, bad = [], [], [], []
    for (index, data, digest), pixels in zip(raw, decode_jpegs([data for _, data, _ in raw], device)):
        if pixels is not None:
            tensor = transform_decoded(pixels, prep)
        else:
            try:
                tensor = transform(load_input_image(io.BytesIO(data), prep)).to(device)
            except ImageDecodeError as exc:
                bad.append((index, str(exc)))
                continue
        indices.append(index)
        tensors.append(tensor)
        digests.append(digest)
    return indices, tensors, digests, bad


@dataclass
class EncodeResult:
    embeddings: np.ndarray  # (n_ok, dim) float32, rows in the order of `ok_indices`
    ok_indices: np.ndarray  # positions in the input list that were encoded
    sha256: list[str] = field(default_factory=list)  # content hash of each encoded photo, same order
    failures: list[tuple[int, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int | None = None  # photos per forward pass; None: no pass ran (cached feature maps)

    @classmethod
    def from_chunks(cls, chunks: list[np.ndarray], order: list[np.ndarray], sha256: list[str],
                    failures: list[tuple[int, str]], dim: int, timings: dict,
                    batch_size: int | None = None) -> "EncodeResult":
        """Joins an engine's per-batch embeddings and catalogue positions (both in catalogue order)."""
        embeddings = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dim), np.float32)
        ok = np.concatenate(order).astype(np.int64) if order else np.zeros(0, np.int64)
        wall = timings.get("wall_s", 0)
        timings = {"images_per_s": round(len(ok) / wall, 2) if wall > 0 else 0.0} | timings
        return cls(embeddings=embeddings, ok_indices=ok, sha256=sha256, failures=sorted(failures), timings=timings,
                   batch_size=batch_size)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def encode_paths(paths: Sequence[Path], loaded: LoadedModel, batch_size: int | str = AUTO,
                 device: torch.device | str = "cpu", workers: int | None = None,
                 progress: bool = True, plan: InferencePlan | None = None,
                 jpeg_decode: str = "workers", decode_priority: str = "auto") -> EncodeResult:
    """`batch_size`: photos per forward pass, or "auto": model/batch_size.py's rule for the plan's device.

    `jpeg_decode`: "workers" decodes every photo in the worker processes; "device" decodes JPEGs
    on the plan's device (nvJPEG on a GPU), batch by batch, and leaves the workers the reading.

    `decode_priority`: "idle" runs the worker processes only on CPU time nothing else wants (see
    model/cpu_runtime.yield_cpu_to_others), "normal" as any process; "auto" is normal.

    Why auto is not idle, even with the model on the CPU: idle bought 0.88 -> 0.90 of the model's
    rate on an idle machine, and cost twenty-fold (tens of img/s -> 1.2) beside another job using
    1.5 of 2 cores, where idle decoders get next to no CPU time. Noticing that and stopping
    yielding is not open to us: an unprivileged process cannot leave SCHED_IDLE (the kernel wants an
    RLIMIT_NICE that covers its nice value, and the default, 0, covers none), so the workers would
    have to be restarted mid-build. Idle stays an opt-in for a machine known to have nothing else to run."""
    if jpeg_decode not in JPEG_DECODE_CHOICES:
        raise ValueError(f"jpeg_decode must be one of {JPEG_DECODE_CHOICES}, got {jpeg_decode!r}")
    if decode_priority not in DECODE_PRIORITY_CHOICES:
        raise ValueError(f"decode_priority must be one of {DECODE_PRIORITY_CHOICES}, got {decode_priority!r}")
    device = torch.device(device)
    plan = plan or plan_inference(device)
    idle_decoders = decode_priority == "idle"
    used_batch = resolve_batch_size(batch_size, plan.device)
    log.info("encoding in batches of %s", describe_batch_size(batch_size, used_batch, plan.device))
    model = prepare_model(loaded.model, plan)
    prep = loaded.config.preprocessing
    transform = build_transform(prep)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        PhotoDataset(paths, prep, raw_jpegs=jpeg_decode == "device"), batch_size=used_batch, shuffle=False,
        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if workers else None,
        worker_init_fn=worker_yielding_to_model if idle_decoders else None,
    )
    chunks, order, digests, failures = [], [], [], []
    decode_s = forward_s = device_decode_s = 0.0
    started = time.perf_counter()
    bar = _progress_bar(len(paths), progress)
    for indices, batch, batch_digests, bad, batch_decode_s, raw in loader:
        if raw:
            t0 = time.perf_counter()
            raw_indices, raw_tensors, raw_digests, raw_bad = _decode_raw_on_device(raw, prep, plan.device, transform)
            device_decode_s += time.perf_counter() - t0
            bad = bad + raw_bad
            if raw_tensors:
                on_device = torch.stack(raw_tensors)
                batch = on_device if batch is None else torch.cat([batch.to(plan.device), on_device])
                indices = torch.cat([indices, torch.tensor(raw_indices, dtype=torch.long)])
                batch_digests = batch_digests + raw_digests
                # back in catalogue order, so vector ids do not depend on where photos were decoded
                in_order = torch.argsort(indices)
                batch, indices = batch[in_order.to(batch.device)], indices[in_order]
                batch_digests = [batch_digests[i] for i in in_order.tolist()]
        failures.extend(bad)
        digests.extend(batch_digests)
        decode_s += batch_decode_s
        if batch is not None:
            t0 = time.perf_counter()
            chunks.append(embed_batch(model, batch, plan))
            forward_s += time.perf_counter() - t0
            order.append(indices.numpy())
        bar.update(len(indices) + len(bad))
    bar.close()
    wall = time.perf_counter() - started
    return EncodeResult.from_chunks(chunks, order, digests, failures, loaded.model.embedding_dim, timings={
        "wall_s": round(wall, 3),
        # decode is summed over workers, so it can exceed the wall time when they overlap
        "decode_preprocess_s_total": round(decode_s, 3),
        "forward_s": round(forward_s, 3),
        "device_decode_s": round(device_decode_s, 3),  # JPEGs decoded on the device, in this process
    } | plan.describe(), batch_size=used_batch)


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="encoding", disable=not enabled, smoothing=0.1)
