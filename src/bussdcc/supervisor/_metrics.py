"""Prometheus metrics of a runtime: one collector that reads the runtime's own state at scrape time.

Nothing is counted twice: every sample is read, when Prometheus asks, from what the
runtime keeps anyway (``Runtime.stats()``, ``Runtime.workers()``, the supervisor's
latency histograms). So a removed worker's series vanish with it, and a scrape costs
nothing between scrapes. ``prometheus-client`` (the ``web`` extra) is imported only
when the first scrape comes (it takes ~95 ms to import).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ._latency import Histogram
from ._managed import ManagedRuntime
from ._workers import WorkerState

if TYPE_CHECKING:
    from ._dispatcher import Dispatcher
    from ._supervisor import Supervisor

__all__ = ["Exposition", "metric_names"]

_MISSING = "the metrics need prometheus-client: pip install 'bussdcc[web]'"


def _buckets(hist: Histogram) -> tuple[list[tuple[str, float]], float]:
    cumulative, _, total = hist.snapshot()
    return [(_bound(b), float(n)) for b, n in cumulative], total


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


#: States whose process is up and past its handshake: an unhealthy worker still runs.
_UP = frozenset({WorkerState.RUNNING, WorkerState.UNHEALTHY})


class _Collector:
    """Yields the metric families of one runtime (called by prometheus-client at each scrape)."""

    def __init__(self, runtime: ManagedRuntime, supervisor: Supervisor, dispatcher: Dispatcher) -> None:
        self._rt = runtime
        self._sup = supervisor
        self._dispatcher = dispatcher

    def describe(self) -> list[Any]:
        return []  # no describe at registration: the samples are read at scrape time only

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        rt = self._rt
        stats = rt.stats()
        statuses = rt.workers()
        info = GaugeMetricFamily("bussdcc_runtime_info", "The runtime's name and version", labels=["name", "version"])
        info.add_metric([rt.name, rt.version], 1.0)
        yield info
        up = GaugeMetricFamily(
            "bussdcc_worker_up",
            "1 while the worker's process is up and serving (running or unhealthy), else 0",
            labels=["worker", "role"],
        )
        state = GaugeMetricFamily(
            "bussdcc_worker_state",
            "1 for the state the worker is in, 0 for the others",
            labels=["worker", "role", "state"],
        )
        restarts = CounterMetricFamily(
            "bussdcc_worker_restarts", "Respawns of the worker since boot", labels=["worker", "role"]
        )
        rss = GaugeMetricFamily(
            "bussdcc_worker_rss_bytes", "Resident memory, as last sampled", labels=["worker", "role"]
        )
        cpu = GaugeMetricFamily(
            "bussdcc_worker_cpu_percent", "CPU use in percent of one core, as last sampled", labels=["worker", "role"]
        )
        uptime = GaugeMetricFamily(
            "bussdcc_worker_uptime_seconds", "How long the current incarnation has run", labels=["worker", "role"]
        )
        incarnation = GaugeMetricFamily(
            "bussdcc_worker_incarnation", "The number of the worker's current incarnation", labels=["worker", "role"]
        )
        counts = GaugeMetricFamily("bussdcc_workers", "Workers in each state", labels=["state"])
        # Every state the lifecycle has, whatever it is: a state added later shows up by itself.
        names = [s.value for s in WorkerState]
        per_state = dict.fromkeys(names, 0)
        for ws in statuses:
            labels = [ws.name, ws.role]
            now = str(ws.state)
            per_state[now] = per_state.get(now, 0) + 1
            up.add_metric(labels, 1.0 if ws.state in _UP else 0.0)
            for name in names:
                state.add_metric([*labels, name], 1.0 if name == now else 0.0)
            restarts.add_metric(labels, float(ws.restarts))
            incarnation.add_metric(labels, float(ws.incarnation))
            if ws.rss is not None:
                rss.add_metric(labels, float(ws.rss))
            if ws.cpu_percent is not None:
                cpu.add_metric(labels, float(ws.cpu_percent))
            if ws.uptime is not None:
                uptime.add_metric(labels, ws.uptime)
        for name, n in per_state.items():
            counts.add_metric([name], float(n))
        yield from (up, state, restarts, rss, cpu, uptime, incarnation, counts)

        def counter(name: str, doc: str, value: int) -> Any:
            return CounterMetricFamily(name, doc, value=float(value))

        def gauge(name: str, doc: str, value: float) -> Any:
            return GaugeMetricFamily(name, doc, value=float(value))

        yield counter("bussdcc_messages_dispatched", "Messages dispatched since boot", stats.dispatched)
        yield counter("bussdcc_messages_lost", "Messages workers emitted that never arrived (they died)", stats.lost)
        yield counter("bussdcc_frames_rejected", "Frames and items from workers refused as malformed", stats.rejected)
        yield counter(
            "bussdcc_messages_undelivered", "Events not delivered to Services behind at shutdown", stats.undelivered
        )
        yield counter("bussdcc_device_late_replies", "Device replies that matched no call", stats.late_replies)
        yield gauge(
            "bussdcc_device_calls_in_flight", "Calls to devices in flight (sent or parked)", stats.calls_in_flight
        )
        yield gauge("bussdcc_device_calls_parked", "Calls waiting for a device to become ready", stats.calls_parked)
        yield gauge("bussdcc_emitters_waiting", "Emitters waiting for room in the outbox", stats.emitters_waiting)
        yield gauge("bussdcc_outbox_bytes", "Weight of the messages queued for the workers", stats.outbox_bytes)
        items, size = self._dispatcher.load()
        yield gauge("bussdcc_dispatch_backlog_items", "Items waiting for the dispatch thread", items)
        yield gauge("bussdcc_dispatch_backlog_bytes", "Bytes waiting for the dispatch thread", size)

        buckets, total = _buckets(self._sup.respawn_latency)
        respawn = HistogramMetricFamily(
            "bussdcc_respawn_latency_seconds",
            "From a worker's death being seen to its next incarnation being ready (backoff included)",
        )
        respawn.add_metric([], buckets, total)
        yield respawn
        calls = HistogramMetricFamily(
            "bussdcc_device_call_duration_seconds",
            "From a call being routed to the device's answer, per device",
            labels=["device"],
        )
        devices = {ws.name for ws in statuses if ws.role == "device"}
        for device, hist in sorted(tuple(self._sup.calls.latency.items())):
            if device in devices:  # a removed device's series go with it
                buckets, total = _buckets(hist)
                calls.add_metric([device], buckets, total)
        yield calls


class Exposition:
    """The Prometheus text exposition of one runtime, made on demand (any thread)."""

    def __init__(self, runtime: ManagedRuntime, supervisor: Supervisor, dispatcher: Dispatcher) -> None:
        self._collector = _Collector(runtime, supervisor, dispatcher)
        self._render: Callable[[], bytes] | None = None
        self._lock = threading.Lock()
        #: The content type of the exposition (known once the library is loaded).
        self.content_type = "text/plain; version=0.0.4; charset=utf-8"

    def render(self) -> bytes:
        """The exposition now (``RuntimeError`` if prometheus-client is not installed)."""
        with self._lock:  # one scrape at a time: two at once would only cost twice
            if self._render is None:
                try:
                    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
                except ImportError as exc:
                    raise RuntimeError(_MISSING) from exc
                registry = CollectorRegistry(auto_describe=False)
                registry.register(self._collector)
                self.content_type = CONTENT_TYPE_LATEST

                def render() -> bytes:
                    return generate_latest(registry)

                self._render = render
            return self._render()


def metric_names() -> list[str]:
    """The names of the metrics (for the docs and tests)."""
    return [
        "bussdcc_runtime_info",
        "bussdcc_worker_up",
        "bussdcc_worker_state",
        "bussdcc_worker_restarts_total",
        "bussdcc_worker_rss_bytes",
        "bussdcc_worker_cpu_percent",
        "bussdcc_worker_uptime_seconds",
        "bussdcc_worker_incarnation",
        "bussdcc_workers",
        "bussdcc_messages_dispatched_total",
        "bussdcc_messages_lost_total",
        "bussdcc_frames_rejected_total",
        "bussdcc_messages_undelivered_total",
        "bussdcc_device_late_replies_total",
        "bussdcc_device_calls_in_flight",
        "bussdcc_device_calls_parked",
        "bussdcc_emitters_waiting",
        "bussdcc_outbox_bytes",
        "bussdcc_dispatch_backlog_items",
        "bussdcc_dispatch_backlog_bytes",
        "bussdcc_respawn_latency_seconds",
        "bussdcc_device_call_duration_seconds",
    ]
