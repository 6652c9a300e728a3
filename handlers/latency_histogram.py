"""Latency histograms per model on TorchServe's metrics endpoint, as Prometheus' classic histograms:
`<name>_bucket{le="..."}` (cumulative), `<name>_sum` and `<name>_count`, so that
`histogram_quantile(0.99, sum by (ModelName, le) (rate(<name>_bucket[5m])))` gives a percentile.

Why the handler keeps them itself. TorchServe 0.12's own latency figures give no percentile:
HandlerTime and PredictionTime are gauges (the last batch's value) and ts_inference_latency_microseconds
is a sum. A worker may send a HISTOGRAM metric, but the frontend (PrometheusHistogram.java, read in
pytorch/serve v0.12.0) builds it with the Prometheus Java client's default buckets and observes one
value per metric line: the buckets cannot be chosen, and one line per request costs throughput (every
line a worker prints is parsed and logged by the frontend; 3 lines per batch cost the text model a
fifth of its throughput at batch 8). So the worker counts its observations into buckets of its own
and, at most once every FLUSH_SECONDS, sends each bucket's increase as a COUNTER, which the frontend
adds up: a few dozen lines a second at most, whatever the request rate.

What is observed (BatchClassifierHandler.handle):
- `ts_handler_request_seconds`: each request's time in the worker, from its batch reaching the handler
  to its answer (decoding, forward, postprocessing, explanations), once per request. The wait in
  TorchServe's queue before that is not in it: the frontend tells a worker nothing of it; see
  ts_queue_latency_microseconds for its mean.
- `ts_handler_forward_seconds`: the batch's forward pass (out-of-memory retries in halves included),
  once per request that had an item in it.
"""
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

# Upper bounds in seconds, from `make bench` on the 2-core CPU machine (bench/results/2026-11-28-*):
# a text request alone takes under 1 ms in the worker and 5-7 ms at the client, an image batch of 8
# about 60 ms, an audio batch 45 ms, explanations 20-470 ms (2.4 s with SmoothGrad), and the
# explanation budget stops a batch at 10 s. The buckets are densest over 5-150 ms, where a p50 or p99
# moves when a model needs more workers; a GPU's sub-millisecond forwards land in the first bucket.
BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_HISTOGRAM, FORWARD_HISTOGRAM = "ts_handler_request_seconds", "ts_handler_forward_seconds"
# Prometheus scrapes every 15-60 s and alerts on 5-minute rates: a second's delay costs nothing there,
# and bounds the metric lines a worker prints to about 2 x (buckets + 2) a second.
FLUSH_SECONDS = 1.0

# (metric name, value, dimension names, dimension values) → one COUNTER increment on /metrics.
EmitCounter = Callable[[str, float, Sequence[str], Sequence[str]], None]


def bucket_label(bound: float) -> str:
    """The `le` label of a bucket as Prometheus' own clients write it: 0.005, 1.0, +Inf."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Buckets:
    """One histogram's observations since its last flush, by bucket (not cumulative here)."""

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(bounds) + (float("inf"),)
        self.counts = [0] * len(self.bounds)
        self.total_seconds, self.observations = 0.0, 0

    def observe(self, seconds: float, times: int = 1) -> None:
        index = next(i for i, bound in enumerate(self.bounds) if seconds <= bound)
        self.counts[index] += times
        self.total_seconds += seconds * times
        self.observations += times

    def take(self) -> Tuple[List[int], float, int]:
        """The cumulative increase of each bucket, the sum and the count since the last take; then empty."""
        cumulative, running = [], 0
        for count in self.counts:
            running += count
            cumulative.append(running)
        taken = (cumulative, self.total_seconds, self.observations)
        self.counts = [0] * len(self.bounds)
        self.total_seconds, self.observations = 0.0, 0
        return taken


class LatencyHistograms:
    """The request and forward histograms of one model's worker, sent as counters through `emit`.

    observe() only counts (under a lock, microseconds); a daemon thread flushes what was counted at most
    every `flush_seconds`, so a burst's last requests reach /metrics within that time even when no
    batch follows. `announce()` sends every series at zero when the worker starts: a counter's first
    increment is invisible to rate() and increase() when the series appears with it.
    """

    def __init__(self, model_name: str, emit: EmitCounter, bounds: Sequence[float] = BUCKETS_SECONDS,
                 flush_seconds: float = FLUSH_SECONDS):
        self.model_name, self.emit, self.flush_seconds = model_name, emit, flush_seconds
        self.histograms: Dict[str, Buckets] = {name: Buckets(bounds) for name in (REQUEST_HISTOGRAM, FORWARD_HISTOGRAM)}
        self.lock = threading.Lock()
        self.pending = threading.Event()
        self.flusher: Optional[threading.Thread] = None

    def announce(self) -> None:
        for name, histogram in self.histograms.items():
            self._send(name, [0] * len(histogram.bounds), histogram.bounds, 0.0, 0, every_bucket=True)

    def observe(self, request_seconds: float, requests: int, forward_seconds: Optional[float], forwarded: int) -> None:
        """A batch's `requests` answered after `request_seconds` in the worker; its forward pass took
        `forward_seconds` for `forwarded` of them (None: the batch had nothing to forward)."""
        with self.lock:
            if requests:
                self.histograms[REQUEST_HISTOGRAM].observe(request_seconds, requests)
            if forward_seconds is not None and forwarded:
                self.histograms[FORWARD_HISTOGRAM].observe(forward_seconds, forwarded)
        if self.flusher is None:
            self.flusher = threading.Thread(target=self._flush_forever, name="latency-histograms", daemon=True)
            self.flusher.start()
        self.pending.set()

    def flush(self) -> None:
        """Send what was observed since the last flush: the buckets that grew, the sum and the count."""
        with self.lock:
            taken = {name: histogram.take() for name, histogram in self.histograms.items()}
        for name, (cumulative, total_seconds, observations) in taken.items():
            if observations:
                self._send(name, cumulative, self.histograms[name].bounds, total_seconds, observations)

    def _send(self, name: str, cumulative: List[int], bounds: Sequence[float], total_seconds: float,
              observations: int, every_bucket: bool = False) -> None:
        labels = ("ModelName", "Level")
        values = (self.model_name, "Model")
        for bound, increase in zip(bounds, cumulative):
            if increase or every_bucket:
                self.emit(f"{name}_bucket", increase, labels + ("le",), values + (bucket_label(bound),))
        # Rounded to microseconds: the frontend's metric-line pattern takes no exponent with a '+'.
        self.emit(f"{name}_sum", round(total_seconds, 6), labels, values)
        self.emit(f"{name}_count", observations, labels, values)

    def _flush_forever(self) -> None:
        while True:
            self.pending.wait()
            time.sleep(self.flush_seconds)
            self.pending.clear()
            try:
                self.flush()
            except Exception:  # a metric must never take the worker down; the next flush tries again
                logger.exception("sending the latency histograms failed")


def torchserve_counter_emitter() -> EmitCounter:
    """Counters through TorchServe's metrics API (ts.metrics' CachingMetric: the `[METRICS]` lines the
    frontend parses), without a request id: the flushing thread belongs to no batch."""
    from ts.metrics.caching_metric import CachingMetric
    from ts.metrics.metric_type_enum import MetricTypes

    metrics: Dict[str, CachingMetric] = {}

    def emit(name: str, value: float, dimension_names: Sequence[str], dimension_values: Sequence[str]) -> None:
        metric = metrics.get(name)
        if metric is None:
            unit = "count" if name.endswith(("_bucket", "_count")) else "seconds"
            metric = metrics[name] = CachingMetric(name, unit, list(dimension_names), MetricTypes.COUNTER)
        metric.add_or_update(value, list(dimension_values))

    return emit
