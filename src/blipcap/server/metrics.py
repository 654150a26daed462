"""Prometheus text exposition (format 0.0.4) for the service: counters, gauges and histograms.

Small and dependency-free; each app has its own `Metrics`, so tests can run several apps in one
process. Updates come from the event loop and the model thread, hence the lock.
"""

from __future__ import annotations

import math
import threading
from typing import Iterable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, labels: Iterable[str] = ()):
        self.name, self.help, self.label_names = name, help_, tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.label_names)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._value = 0.0

    def set(self, value: float) -> None:
        self._value = float(value)

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_num(self._value)}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_: str, buckets: Iterable[float], labels: Iterable[str] = ()):
        super().__init__(name, help_, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[tuple[str, ...], list] = {}  # labels -> [bucket counts, sum, count]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.label_names)
        with self._lock:
            counts, _, _ = series = self._series.setdefault(key, [[0] * len(self.buckets), 0.0, 0])
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1  # stored per bucket; made cumulative when rendered
                    break
            series[1] += value
            series[2] += 1

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s, n)) for k, (c, s, n) in self._series.items())
        lines = self.header()
        for key, (counts, total, n) in items:
            running = 0
            for bound, c in zip(self.buckets, counts):
                running += c
                le = f'le="{_num(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {n}")
        return lines


class Metrics:
    """Everything /metrics reports."""

    def __init__(self) -> None:
        self.requests = Counter("blipcap_requests_total", "HTTP requests answered, by route and status",
                                ("route", "status"))
        self.images = Counter("blipcap_images_total", "Images received, by outcome", ("outcome",))
        self.errors = Counter("blipcap_errors_total", "Refusals and failures, by kind", ("kind",))
        self.batch_size = Histogram("blipcap_batch_size", "Images per model call", BATCH_BUCKETS)
        self.queue_depth = Gauge("blipcap_queue_depth", "Images waiting for the model")
        self.request_seconds = Histogram("blipcap_request_duration_seconds",
                                         "Caption request latency, body read to response", LATENCY_BUCKETS)
        self.queue_seconds = Histogram("blipcap_queue_wait_seconds", "Time an image waits for its batch",
                                       LATENCY_BUCKETS)
        self.batch_seconds = Histogram("blipcap_batch_duration_seconds", "Model time per batch", LATENCY_BUCKETS)
        self.ready = Gauge("blipcap_ready", "1 once the model is loaded and warmed up")

    def render(self) -> str:
        parts = (self.requests, self.images, self.errors, self.batch_size, self.queue_depth,
                 self.request_seconds, self.queue_seconds, self.batch_seconds, self.ready)
        return "\n".join(line for metric in parts for line in metric.render()) + "\n"
