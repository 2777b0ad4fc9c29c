"""The running parts of the service, built at start-up and handed to the routes as one dependency."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field

import anyio

from model.batch_size import describe_batch_size, resolve_batch_size

from .batching import MicroBatcher
from .engine import SearchEngine
from .limits import Capacity
from .observability import ServiceMetrics
from .reload import EngineHolder, ReloadOutcome
from .settings import Settings

log = logging.getLogger("snap2shop.service")


@dataclass
class Services:
    settings: Settings
    holder: EngineHolder
    batcher: MicroBatcher
    metrics: ServiceMetrics
    capacity: Capacity
    decode_slots: anyio.CapacityLimiter  # decoding threads at once: bounds the memory of full-size decodes
    _watcher: asyncio.Task | None = field(default=None, repr=False)

    def live_numbers(self) -> dict:
        return {"in_flight": self.capacity.in_flight, "max_in_flight": self.capacity.limit,
                "queue_depth": self.batcher.depth(), "max_batch_size": self.batcher.max_size,
                "rejected": self.capacity.rejected}


def start_services(settings: Settings, engine: SearchEngine, metrics: ServiceMetrics, capacity: Capacity) -> Services:
    """Called inside the event loop (the lifespan): the watcher task and limiter belong to it."""
    holder = EngineHolder(settings, engine)
    # A hot reload keeps the device (it reuses the embedder or plans the same one), so this holds.
    device = engine.plan.device
    max_size = resolve_batch_size(settings.batch_max_size, device)
    log.info("micro-batches of up to %s", describe_batch_size(settings.batch_max_size, max_size, device))
    batcher = MicroBatcher(max_size, settings.batch_max_wait_ms, on_batch=metrics.observe_batch,
                           threads=settings.torch_threads or None)

    def on_reload(outcome: ReloadOutcome, served: SearchEngine) -> None:
        metrics.reloads.labels("swapped" if outcome.reloaded else "failed" if outcome.error else "unchanged").inc()
        metrics.set_index(served)

    holder.on_reload = on_reload
    metrics.set_index(engine)
    metrics.queue_depth.set_function(batcher.depth)
    metrics.in_flight.set_function(lambda: capacity.in_flight)
    services = Services(settings, holder, batcher, metrics, capacity,
                        anyio.CapacityLimiter(settings.decode_threads or os.cpu_count() or 1))
    if settings.reload_poll_s > 0:
        services._watcher = asyncio.get_running_loop().create_task(holder.watch(settings.reload_poll_s))
    return services


async def stop_services(services: Services) -> None:
    if services._watcher is not None:
        services._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await services._watcher
    await asyncio.to_thread(services.batcher.close)
