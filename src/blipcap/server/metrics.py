"""What /metrics reports, through prometheus_client.

Each app has its own ``CollectorRegistry`` (not the library's global one), so tests can run several
apps in one process; ``render()`` is the text exposition of that registry alone. Metric names and
labels are the ones the hand-written exposition had; prometheus_client adds its standard
``*_created`` series and writes bucket bounds as floats (``le="1.0"``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Everything /metrics reports, registered in a registry of its own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("blipcap_requests", "HTTP requests answered, by route and status",
                                ("route", "status"), registry=r)
        self.images = Counter("blipcap_images", "Images received, by outcome", ("outcome",), registry=r)
        self.errors = Counter("blipcap_errors", "Refusals and failures, by kind", ("kind",), registry=r)
        self.batch_size = Histogram("blipcap_batch_size", "Images per model call", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("blipcap_queue_depth", "Images waiting for the model", registry=r)
        self.request_seconds = Histogram("blipcap_request_duration_seconds",
                                         "Caption request latency, body read to response",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("blipcap_queue_wait_seconds", "Time an image waits for its batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_seconds = Histogram("blipcap_batch_duration_seconds", "Model time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.ready = Gauge("blipcap_ready", "1 once the model is loaded and warmed up", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
