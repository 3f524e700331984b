"""Counters and histograms for `/metrics`, written in the Prometheus text format (0.0.4).

Every update happens on the event loop thread, so no locks are needed. With `--workers N`
each process keeps and reports its own figures, as any multi-process server without a shared
store does; scrape each worker, or run one worker per container.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

LabelValues = tuple[str, ...]

# Request latency in seconds, from 0.5 ms to 10 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Inputs per kernel call.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def escape(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels_text(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    pairs = [f'{name}="{escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    """A monotonically increasing count per label combination."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = name, help_text, labels
        # A series without labels exists from the start, so it reads 0 before any traffic.
        self.values: dict[LabelValues, float] = {} if labels else {(): 0.0}

    def inc(self, *values: str, amount: float = 1.0) -> None:
        self.values[values] = self.values.get(values, 0.0) + amount

    def samples(self) -> Iterable[str]:
        for values, count in sorted(self.values.items()):
            yield f"{self.name}{labels_text(self.labels, values)} {number(count)}"


class Gauge(Counter):
    """A value that goes up and down, per label combination."""

    kind = "gauge"

    def set(self, *values: str, value: float) -> None:
        self.values[values] = value


class Histogram:
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
    ) -> None:
        self.name, self.help, self.labels = name, help_text, labels
        self.buckets = (*buckets, math.inf)
        # Per label values: the count of each bucket, then the sum, then the count.
        self.series: dict[LabelValues, list[float]] = {} if labels else {(): self.empty()}

    def empty(self) -> list[float]:
        return [0.0] * (len(self.buckets) + 2)

    def observe(self, value: float, *values: str) -> None:
        series = self.series.setdefault(values, self.empty())
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                series[index] += 1
        series[-2] += value
        series[-1] += 1

    def samples(self) -> Iterable[str]:
        for values, series in sorted(self.series.items()):
            for bound, count in zip(self.buckets, series[:-2], strict=True):
                le = f'le="{number(bound)}"'
                yield f"{self.name}_bucket{labels_text(self.labels, values, le)} {number(count)}"
            yield f"{self.name}_sum{labels_text(self.labels, values)} {number(series[-2])}"
            yield f"{self.name}_count{labels_text(self.labels, values)} {number(series[-1])}"


class ServerMetrics:
    """What the server reports: traffic per route and status, latency, batch sizes, model."""

    def __init__(self) -> None:
        self.requests = Counter(
            "cnntool_requests_total",
            "HTTP requests answered, by route, method and status.",
            ("route", "method", "status"),
        )
        self.latency = Histogram(
            "cnntool_request_duration_seconds",
            "Time from request to the end of the response.",
            LATENCY_BUCKETS,
            ("route",),
        )
        self.batch_size = Histogram(
            "cnntool_batch_size",
            "Inputs per kernel call (micro-batches of concurrent requests).",
            BATCH_BUCKETS,
        )
        self.inference = Histogram(
            "cnntool_inference_duration_seconds", "Time the network took per micro-batch.", LATENCY_BUCKETS
        )
        self.predictions = Counter("cnntool_predictions_total", "Inputs predicted.")
        self.ready = Gauge("cnntool_model_ready", "1 once the bundle is loaded and its kernels compiled.")
        self.model = Gauge(
            "cnntool_model_info",
            "The model being served (value is always 1).",
            ("name", "digest", "cnntool_version", "parameters", "input_shape"),
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.inc(route, method, str(status))
        self.latency.observe(seconds, route)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        self.predictions.inc(amount=size)

    def render(self) -> str:
        lines = []
        for metric in (
            self.requests,
            self.latency,
            self.batch_size,
            self.inference,
            self.predictions,
            self.ready,
            self.model,
        ):
            lines += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]
            lines += metric.samples()
        return "\n".join(lines) + "\n"
