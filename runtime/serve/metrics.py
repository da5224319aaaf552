"""Prometheus metrics of ``rewardrt serve``, kept in a registry per app (never the global one), so
several apps in one process (tests) do not collide. Needs ``rewardrt[serve]``."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ServeMetrics:
    """Request count by route and status, request latency, batch size and batch time, queue depth,
    requests in flight."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, routes: set[str], queue_depth: Callable[[], float],
                 in_flight: Callable[[], float] | None = None) -> None:
        self.routes = routes
        self.registry = CollectorRegistry()
        self.requests = Counter("rewardrt_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("rewardrt_request_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("rewardrt_batch_size", "pairs per model call (micro-batch size)",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("rewardrt_batch_seconds", "time per model call",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.pairs = Counter("rewardrt_pairs_scored", "pairs scored", registry=self.registry)
        queue = Gauge("rewardrt_queue_pairs", "pairs waiting for the batcher", registry=self.registry)
        queue.set_function(queue_depth)
        if in_flight is not None:
            active = Gauge("rewardrt_requests_in_flight", "HTTP requests being served",
                           registry=self.registry)
            active.set_function(in_flight)

    def route(self, path: str) -> str:
        """The route label: known paths as is, anything else as 'other' (bounded cardinality)."""
        return path if path in self.routes else "other"

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        route = self.route(path)
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, pairs: int, seconds: float) -> None:
        self.batch_size.observe(pairs)
        self.batch_seconds.observe(seconds)
        self.pairs.inc(pairs)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: times every HTTP request and records its final status."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - started)
