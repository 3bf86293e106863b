"""Prometheus metrics of the orchestrator (GET /metrics), and the middleware that counts requests by route."""
from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("djz_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("djz_http_request_seconds", "Time to answer an HTTP request (streams: to the last byte)",
                    ["method", "route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
ACTIVE_STREAMS = Gauge("djz_active_streams", "Generations streaming from Triton now")
QUEUE_DEPTH = Gauge("djz_batch_queue_depth", "Batch items waiting to run")
AUDIO_SECONDS = Counter("djz_audio_seconds_total", "Seconds of audio generated", ["source"])
GENERATIONS = Counter("djz_generations_total", "Generations finished, by outcome", ["source", "outcome"])
FIRST_AUDIO = Histogram("djz_first_audio_seconds", "Request to first audio sent",
                        buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10))


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (/api/v2/voices/{voice_id}), so that ids do
    not explode the label set; unknown paths count as 'unmatched'."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], template, str(status)).inc()
            LATENCY.labels(scope["method"], template).observe(time.perf_counter() - started)
