"""Micro-batching: concurrent searches share forward passes instead of queueing one pass each.

One worker thread owns the model. It blocks for the first queued photo, then takes whatever else
is already waiting (up to `max_size`, optionally waiting `max_wait_ms` for more) and embeds them
together. A lone request therefore never waits for company, while under load each forward pass
carries many photos, which is where a GPU (and, less so, a CPU) gets its throughput.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from model.cpu_runtime import single_threaded_torch, use_intra_op_threads

log = logging.getLogger("snap2shop.service")

_STOP = object()


@dataclass
class _Job:
    embedder: object  # jobs are grouped by embedder: a hot reload may swap models mid-queue
    tensor: torch.Tensor
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    photo: object = None  # the decoded photo a located garment is cropped from, if the model wants it
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class EmbedResult:
    vector: np.ndarray  # (1, D)
    box: np.ndarray | None  # (4,) the garment box the model found, in input-frame units; None: none sought
    queue_ms: float  # waiting for the worker
    embed_ms: float  # the forward pass this photo rode in
    batch_size: int


class MicroBatcher:
    def __init__(self, max_size: int = 16, max_wait_ms: float = 0.0,
                 on_batch: Callable[[int, float], None] | None = None, threads: int | None = None) -> None:
        """`threads`: make the worker the one thread with that many intra-op threads and every other
        thread single-threaded (see model/cpu_runtime); None leaves torch's threads as they are.
        `max_size`: a number; Settings' "auto" is resolved for the device before it gets here (runtime)."""
        if not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a whole number of at least 1, got {max_size!r}")
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1e3
        self._on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(threads, started), name="embedder", daemon=True)
        self._thread.start()
        started.wait()
        if threads is not None:
            single_threaded_torch()

    def depth(self) -> int:
        """Photos waiting for a forward pass."""
        return self._queue.qsize()

    async def embed(self, embedder, tensor: torch.Tensor, photo=None) -> EmbedResult:
        """The unit vector of one preprocessed photo, computed in a shared batch."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(embedder, tensor, future, loop, photo=photo))
        return await future

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self, threads: int | None, started: threading.Event) -> None:
        if threads is not None:
            use_intra_op_threads(threads)
        started.set()
        pending: list[_Job] = []
        while True:
            first = pending.pop(0) if pending else self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._collect(first, pending)
            try:
                self._embed(batch)
            except Exception:  # a bug here must not stop the only worker: every search would hang
                log.exception("the embedding worker hit an error; it carries on")
                for job in batch:
                    _settle_threadsafe(job, None, RuntimeError("embedding failed"))
            if stop:
                return

    def _collect(self, first: _Job, pending: list[_Job]) -> tuple[list[_Job], bool]:
        """`first` plus queued jobs of the same embedder; jobs of another go back to `pending`."""
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_size:
            try:
                remaining = deadline - time.perf_counter()
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return batch, True
            if job.embedder is first.embedder:
                batch.append(job)
            else:
                pending.append(job)
        return batch, False

    def _embed(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            stacked = torch.stack([job.tensor for job in batch])
            embedder = batch[0].embedder
            if hasattr(embedder, "embed_queries"):
                photos = [job.photo for job in batch]
                vectors, boxes = embedder.embed_queries(stacked, None if any(p is None for p in photos) else photos)
            else:
                vectors, boxes = embedder.embed(stacked), None
        except Exception as exc:  # the requests get the error; the worker lives on
            log.exception("embedding a batch of %d failed", len(batch))
            for job in batch:
                _settle_threadsafe(job, None, exc)
            return
        embed_ms = (time.perf_counter() - started) * 1e3
        if self._on_batch is not None:
            self._on_batch(len(batch), embed_ms)
        for i, job in enumerate(batch):
            result = EmbedResult(vector=vectors[i:i + 1], box=None if boxes is None else boxes[i],
                                 queue_ms=(started - job.enqueued) * 1e3,
                                 embed_ms=embed_ms, batch_size=len(batch))
            _settle_threadsafe(job, result, None)


def _settle_threadsafe(job: _Job, result, error: BaseException | None) -> None:
    try:
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)
    except RuntimeError:  # the event loop has closed (shutdown): nobody is waiting any more
        pass


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
