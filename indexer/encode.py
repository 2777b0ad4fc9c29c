"""Mapper stage: photos -> L2-normalised embeddings, in batches, decoding in worker processes."""
from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from model import LoadedModel
from model.inference import InferencePlan, embed_batch, plan_inference, prepare_model
from model.config import Preprocessing
from model.preprocessing import ImageDecodeError, build_transform, load_image


class PhotoDataset(Dataset):
    """Decodes and preprocesses one photo; a bad photo yields its error instead of raising,
    so one corrupt file cannot stop a catalogue build."""

    def __init__(self, paths: Sequence[Path], prep: Preprocessing) -> None:
        self.paths = list(paths)
        self.prep = prep
        self.transform = build_transform(prep)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        started = time.perf_counter()
        try:
            data = self.paths[index].read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            tensor = self.transform(load_image(io.BytesIO(data), target_size=self.prep.input_size))
            return index, tensor, digest, time.perf_counter() - started
        except ImageDecodeError as exc:
            return index, None, str(exc), time.perf_counter() - started
        except OSError as exc:
            return index, None, f"cannot read file: {exc.strerror or exc}", time.perf_counter() - started


def _collate(samples):
    # The third field is the photo's sha256 when it decoded, else the reason it did not.
    good = [s for s in samples if s[1] is not None]
    bad = [(s[0], s[2]) for s in samples if s[1] is None]
    indices = torch.tensor([s[0] for s in good], dtype=torch.long)
    batch = torch.stack([s[1] for s in good]) if good else None
    digests = [s[2] for s in good]
    decode_seconds = sum(s[3] for s in samples)
    return indices, batch, digests, bad, decode_seconds


@dataclass
class EncodeResult:
    embeddings: np.ndarray  # (n_ok, dim) float32, rows in the order of `ok_indices`
    ok_indices: np.ndarray  # positions in the input list that were encoded
    sha256: list[str] = field(default_factory=list)  # content hash of each encoded photo, same order
    failures: list[tuple[int, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def encode_paths(paths: Sequence[Path], loaded: LoadedModel, batch_size: int = 32,
                 device: torch.device | str = "cpu", workers: int | None = None,
                 progress: bool = True, plan: InferencePlan | None = None) -> EncodeResult:
    device = torch.device(device)
    plan = plan or plan_inference(device)
    model = prepare_model(loaded.model, plan)
    prep = loaded.config.preprocessing
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        PhotoDataset(paths, prep), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if workers else None,
    )
    chunks, order, digests, failures = [], [], [], []
    decode_s = forward_s = 0.0
    started = time.perf_counter()
    bar = _progress_bar(len(paths), progress)
    for indices, batch, batch_digests, bad, batch_decode_s in loader:
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
    dim = loaded.model.embedding_dim
    embeddings = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, dim), np.float32)
    ok = np.concatenate(order) if order else np.zeros(0, np.int64)
    return EncodeResult(
        embeddings=embeddings, ok_indices=ok, sha256=digests, failures=sorted(failures),
        timings={
            "wall_s": round(wall, 3),
            # decode is summed over workers, so it can exceed the wall time when they overlap
            "decode_preprocess_s_total": round(decode_s, 3),
            "forward_s": round(forward_s, 3),
            "images_per_s": round(len(ok) / wall, 2) if wall > 0 else 0.0,
        } | plan.describe(),
    )


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="encoding", disable=not enabled, smoothing=0.1)
