"""Encoding on Ray Data (`indexer build|add --engine ray`): the same read → decode → embed stages as
encode.py, spread over a Ray cluster, or over a local Ray that this module starts on a laptop.

Decoding runs as Ray tasks (PhotoDataset, so photos are read, hashed and preprocessed exactly as in a
local build); embedding runs in a pool of actors that each load the model once, one GPU per actor
where the cluster has GPUs. Output order is the catalogue's, so vector ids do not depend on the engine.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from model import LoadedModel
from model.batch_size import AUTO, describe_batch_size, resolve_batch_size

from .encode import EncodeResult, PhotoDataset

log = logging.getLogger("snap2shop.indexer")

# Ray's own CPU accounting for each stage. Fractions, so that on a 2-core machine the embedding actor
# never holds every CPU: Ray Data then waits for a free CPU to read with and hangs without a word.
# They differ on purpose: with equal requests Ray fuses the decoding into the actor, which then
# decodes and embeds in turn, one batch at a time (22.6 img/s against 32.5 locally, 2,000 photos).
DECODE_TASK_CPUS = 0.25
EMBED_ACTOR_CPUS = 0.5


class RayEngineError(RuntimeError):
    """Ray is missing, cannot start or connect, or a stage failed; the message says which."""


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayEngineError(
            f"--engine ray needs Ray Data ({exc}); install it with: pip install -r requirements-ray.txt") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address where nothing listens: ray.init would retry for minutes."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayEngineError(f"--ray-address must be ray://host:port, host:port or auto, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RayEngineError(f"nothing answers at Ray address {address}: {exc.strerror or exc}") from None


def _decode_batch(batch: dict, preprocessing: dict) -> dict:
    """Ray task: paths -> normalised pixels, sha256, and the reason for each photo that failed."""
    from model.config import Preprocessing

    prep = Preprocessing.from_dict(preprocessing)
    paths = [Path(p) for p in batch["path"]]
    dataset = PhotoDataset(paths, prep)
    size = prep.input_size
    pixels = np.zeros((len(paths), 3, size, size), np.float32)
    ok, notes = np.zeros(len(paths), bool), []
    for row in range(len(paths)):
        _, tensor, note, _ = dataset[row]
        if tensor is not None:
            pixels[row], ok[row] = tensor.numpy(), True
        notes.append(note)  # sha256 when it decoded, else why not
    return {"index": batch["index"], "pixels": pixels, "ok": ok, "note": np.array(notes, dtype=object)}


class _EncodingActor:
    """Ray actor: loads the model once, then embeds decoded batches."""

    def __init__(self, spec: str, checksum: str, device: str, precision: str) -> None:
        import torch

        from model import load_model
        from model.cpu_runtime import keep_freed_memory
        from model.inference import plan_inference, prepare_model, resolve_device

        keep_freed_memory()
        self.plan = plan_inference(resolve_device(device), precision)
        if self.plan.device.type == "cpu":
            # Ray sets OMP_NUM_THREADS from the actor's (fractional) CPUs, i.e. 1; the model may use the node.
            torch.set_num_threads(os.cpu_count() or 1)
        from .manifest import ModelIdentity

        loaded = ModelIdentity(spec, checksum).require_model(
            load_model(spec), role="the driver loaded", error=RayEngineError,
            hint=f"every Ray node needs the same weights file (this is {socket.gethostname()})")
        self.net = prepare_model(loaded.model, self.plan)
        self.dim = loaded.model.embedding_dim

    def __call__(self, batch: dict) -> dict:
        import torch

        from model.inference import embed_batch

        ok = batch["ok"].astype(bool)
        embeddings = np.zeros((len(ok), self.dim), np.float32)
        if ok.any():
            embeddings[ok] = embed_batch(self.net, torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])), self.plan)
        return {"index": batch["index"], "ok": ok, "note": batch["note"], "embedding": embeddings}


def encode_paths_on_ray(paths: Sequence[Path], loaded: LoadedModel, batch_size: int | str = AUTO, device: str = "auto",
                        precision: str = "auto", address: str | None = None, actors: int | None = None,
                        progress: bool = True) -> EncodeResult:
    """Like encode.encode_paths, on Ray. `address`: a running cluster (ray://… or host:port), or None to
    start a local Ray on this machine's CPUs (and GPUs) and stop it afterwards. `actors`: embedding
    actors (default: one per GPU of the cluster, else one)."""
    ray = _import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a catalogue build
    started_here = not ray.is_initialized()
    try:
        if started_here:
            if address:
                _check_reachable(address)
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    except RayEngineError:
        raise
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError by cause: all mean "no cluster"
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise RayEngineError(f"cannot start or reach {where}: {str(exc).strip().splitlines()[0]}") from None
    try:
        return _encode(ray, paths, loaded, batch_size, device, precision, actors, progress)
    finally:
        if started_here:
            ray.shutdown()


def _encode(ray, paths, loaded: LoadedModel, batch_size: int | str, device: str, precision: str,
            actors: int | None, progress: bool) -> EncodeResult:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # catalogue order in, catalogue order out
    context.enable_progress_bars = progress
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if use_gpu and gpus == 0:
        raise RayEngineError("--device cuda, but the Ray cluster has no GPUs")
    actors = actors or (gpus if use_gpu else 1)
    actor_device = "cuda" if use_gpu else "cpu"
    # The actors' device, not the driver's: a laptop driving a GPU cluster batches for the GPUs. Their
    # memory is not known here; the rule reads this machine's GPU, if any, else takes a large one.
    requested_batch, batch_size = batch_size, resolve_batch_size(batch_size, actor_device)
    log.info("encoding on Ray in batches of %s", describe_batch_size(requested_batch, batch_size, actor_device))
    prep = loaded.config.preprocessing
    started = time.perf_counter()
    rows = ray.data.from_items([{"index": i, "path": str(p)} for i, p in enumerate(paths)])
    decoded = rows.map_batches(_decode_batch, fn_kwargs={"preprocessing": prep.to_dict()}, batch_size=batch_size,
                               num_cpus=DECODE_TASK_CPUS, batch_format="numpy")
    embedded = decoded.map_batches(
        _EncodingActor, fn_constructor_kwargs={"spec": loaded.spec, "checksum": loaded.checksum,
                                          "device": actor_device, "precision": precision},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size, batch_format="numpy",
        num_cpus=EMBED_ACTOR_CPUS, num_gpus=1 if use_gpu else 0)
    chunks, order, digests, failures = [], [], [], []
    try:
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            ok = batch["ok"].astype(bool)
            chunks.append(batch["embedding"][ok])
            order.append(batch["index"][ok])
            digests.extend(str(n) for n in batch["note"][ok])
            failures.extend((int(i), str(n)) for i, n in zip(batch["index"][~ok], batch["note"][~ok]))
    except Exception as exc:  # a stage's exception arrives wrapped in Ray's own types
        cause = exc.__cause__ if isinstance(exc.__cause__, RayEngineError) else exc
        raise RayEngineError(f"Ray encoding failed: {str(cause).strip().splitlines()[-1]}") from None
    return EncodeResult.from_chunks(chunks, order, digests, failures, loaded.model.embedding_dim, timings={
        "wall_s": round(time.perf_counter() - started, 3), "engine": "ray", "ray_actors": actors,
        "device": actor_device}, batch_size=batch_size)
