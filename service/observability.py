"""What an operator sees: Prometheus metrics, a JSON summary of recent timings, request-id logs.

Each app has its own CollectorRegistry (no process-global metrics), so tests and several apps in
one process never mix counts.
"""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("snap2shop.access")

# The steps of one search, in order; each has a latency histogram and a rolling summary.
SEARCH_STEPS = ("read", "decode", "queue", "embed", "search", "metadata")
_LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .075, .1, .15, .25, .5, .75, 1, 2.5, 5, 10)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_RECENT = 2048  # requests kept for the JSON summary's percentiles


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("snap2shop_http_requests", "HTTP requests by route and status",
                                ("method", "route", "status"), registry=r)
        self.latency = Histogram("snap2shop_http_request_duration_seconds", "Whole-request latency by route",
                                 ("route",), buckets=_LATENCY_BUCKETS, registry=r)
        self.steps = Histogram("snap2shop_search_step_duration_seconds", "Latency of each step of a search",
                               ("step",), buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("snap2shop_embed_batch_size", "Photos per forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.in_flight = Gauge("snap2shop_searches_in_flight", "Searches admitted and not yet answered", registry=r)
        self.queue_depth = Gauge("snap2shop_embed_queue_depth", "Photos waiting for a forward pass", registry=r)
        self.rejected = Counter("snap2shop_searches_rejected", "Searches refused with 503 (over capacity)",
                                registry=r)
        self.reloads = Counter("snap2shop_index_reloads", "Index reload attempts by outcome", ("outcome",),
                               registry=r)
        self.index_vectors = Gauge("snap2shop_index_vectors", "Vectors in the served index", registry=r)
        self.index_items = Gauge("snap2shop_index_items", "Items in the served index", registry=r)
        self.index_info = Gauge("snap2shop_index_info", "The served index version and model (value 1)",
                                ("version", "model", "checksum"), registry=r)
        self._recent: dict[str, deque] = {step: deque(maxlen=_RECENT) for step in (*SEARCH_STEPS, "total")}
        self._batches: deque = deque(maxlen=_RECENT)

    def observe_search(self, timings_ms: dict[str, float], total_ms: float) -> None:
        for step in SEARCH_STEPS:
            value = timings_ms.get(f"{step}_ms")
            if value is not None:
                self.steps.labels(step).observe(value / 1e3)
                self._recent[step].append(value)
        self._recent["total"].append(total_ms)

    def observe_batch(self, size: int, embed_ms: float) -> None:
        self.batch_size.observe(size)
        self._batches.append(size)

    def set_index(self, engine) -> None:
        self.index_vectors.set(engine.store.count())
        self.index_items.set(engine.index.manifest.counts.items)
        self.index_info.clear()
        self.index_info.labels(engine.version, engine.model.spec, engine.model.checksum[:12]).set(1)

    def summary(self, live: dict | None = None) -> dict:
        """Percentiles of the last requests' step timings: for a look without a Prometheus server."""
        steps = {}
        for step, values in self._recent.items():
            if values:
                ordered = sorted(values)
                steps[step] = {"count": len(ordered), "p50_ms": _percentile(ordered, 50),
                               "p95_ms": _percentile(ordered, 95), "p99_ms": _percentile(ordered, 99),
                               "mean_ms": round(sum(ordered) / len(ordered), 2)}
        batches = list(self._batches)
        return {"window": _RECENT, "steps_ms": steps,
                "mean_batch_size": round(sum(batches) / len(batches), 2) if batches else None} | (live or {})


def _percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[index], 2)


class RequestObservationMiddleware:
    """Gives each request an id (the client's X-Request-ID when sane, else a new one), returns it
    as a header, counts the request by route template and status, and logs one line for it."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if _REQUEST_ID.match(offered) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            # path_format: the template without converters ("/items/{item_id}", not "{item_id:path}"),
            # so dashboards keep their labels whatever converter a route uses
            route = getattr(scope.get("route"), "path_format", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            state = scope.get("state", {})
            access_log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, elapsed * 1e3, extra={
                "request_id": request_id, "method": scope["method"], "path": scope["path"], "route": route,
                "status": status, "duration_ms": round(elapsed * 1e3, 2),
                **({"timings_ms": state["timings_ms"]} if "timings_ms" in state else {}),
                **({"error": state["error"]} if "error" in state else {}),
            })


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; fields passed with `extra=` (request_id, timings...) ride along."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry |= {k: v for k, v in vars(record).items() if k not in self._standard}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str, level: str = "info") -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        formatter = JsonLogFormatter()
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
