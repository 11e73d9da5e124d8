"""The operator's own Prometheus metrics (API.md, "The operator's own metrics").

A private `CollectorRegistry` per `OperatorMetrics`, so tests can build as many as they like;
`serve()` exposes it with `prometheus_client.start_http_server`.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

# Detection is seconds to minutes: a scrape interval, an evaluation interval, an API call.
DETECTION_BUCKETS = (1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, float("inf"))
QUERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))
# The event loop's lag: fine where the promise is (p99 at most 50 ms), coarse above.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, float("inf"))

# `fillprob_rollout_gate_evaluations_total{result}` values.
GATE_GO = "go"
GATE_NOGO = "nogo"
GATE_NODATA = "nodata"
GATE_ERROR = "error"


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.info = Gauge(
            "fillprob_rollout_info",
            "Where each FillProbRollout stands: 1 for its current phase and state.",
            ["namespace", "name", "phase", "state"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "fillprob_rollout_rollbacks_total",
            "Rollback playbooks applied (R1/R2/R3), by reason.",
            ["namespace", "name", "playbook", "reason"],
            registry=self.registry,
        )
        self.gate_evaluations = Counter(
            "fillprob_rollout_gate_evaluations_total",
            "Gate evaluations by result: go, nogo, nodata (missing data), error.",
            ["result"],
            registry=self.registry,
        )
        self.detection_seconds = Histogram(
            "fillprob_rollout_detection_seconds",
            "From the Prometheus sample that showed a no-go to the rollback env patch applied.",
            buckets=DETECTION_BUCKETS,
            registry=self.registry,
        )
        self.prometheus_queries = Counter(
            "fillprob_rollout_prometheus_queries_total",
            "PromQL queries sent by the gates, by Prometheus URL and result (ok, error, timeout).",
            ["url", "result"],
            registry=self.registry,
        )
        self.prometheus_query_seconds = Histogram(
            "fillprob_rollout_prometheus_query_seconds",
            "Latency of the gates' PromQL queries.",
            buckets=QUERY_BUCKETS,
            registry=self.registry,
        )
        self.prometheus_samples = Counter(
            "fillprob_rollout_prometheus_samples_total",
            "Samples (series) in the answers to the gates' PromQL queries, by Prometheus URL.",
            ["url"],
            registry=self.registry,
        )
        self.event_loop_lag = Histogram(
            "fillprob_rollout_event_loop_lag_seconds",
            "How late the operator's event loop wakes a task that sleeps a fixed period (loop_lag.py).",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.gc_pauses = Histogram(
            "fillprob_operator_gc_pause_seconds",
            "The garbage collector's pauses by generation (0, 1, 2): the event loop waits for them.",
            ["generation"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.condition = Gauge(
            "fillprob_rollout_condition",
            "1 for each status condition's current status (Ready, Progressing, Degraded, MetricsAvailable).",
            ["namespace", "name", "type", "status"],
            registry=self.registry,
        )
        self.last_evaluation = Gauge(
            "fillprob_rollout_last_evaluation_timestamp_seconds",
            "Unix time the last evaluation (tick) of each rollout finished.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.evaluation_interval = Gauge(
            "fillprob_rollout_evaluation_interval_seconds",
            "Each rollout's spec.prometheus.interval in seconds.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.kubernetes_requests = Counter(
            "fillprob_operator_kubernetes_requests_total",
            "Kubernetes API requests the operator's adapter sent, by verb and resource; a pod log "
            "stream opened or reopened counts as verb=follow, resource=pods/log (kopf's own watches "
            "and patches are not counted).",
            ["verb", "resource"],
            registry=self.registry,
        )
        self._info_labels: dict[tuple[str, str], tuple[str, str]] = {}
        self._condition_labels: dict[tuple[str, str, str], str] = {}
        # Per rollout, its last-evaluation child and its interval as last set: `labels()` (label
        # checks, a lock, a dict lookup) was a twentieth of a steady-state tick (issue 10).
        self._evaluated: dict[tuple[str, str], tuple[Any, float]] = {}
        self._gate_children: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._server: Any = None

    def count_gate(self, result: str) -> None:
        """One gate evaluation (`fillprob_rollout_gate_evaluations_total{result}`)."""
        child = self._gate_children.get(result)
        if child is None:
            child = self._gate_children[result] = self.gate_evaluations.labels(result)
        child.inc()

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        self.gc_pauses.labels(str(generation)).observe(seconds)

    def set_info(self, namespace: str, name: str, phase: str, state: str) -> None:
        """One series per rollout: the old (phase, state) label set goes when it changes."""
        with self._lock:
            old = self._info_labels.get((namespace, name))
            if old == (phase, state):
                return
            if old is not None:
                self.info.remove(namespace, name, *old)
            self.info.labels(namespace, name, phase, state).set(1)
            self._info_labels[(namespace, name)] = (phase, state)

    def set_evaluated(
        self, namespace: str, name: str, at: float, interval: float, conditions: dict[str, str]
    ) -> None:
        """After each tick: when, at which interval, and each condition's status (one series per
        condition type; the old status goes when it changes)."""
        with self._lock:
            kept = self._evaluated.get((namespace, name))
            if kept is None or kept[1] != interval:
                self.evaluation_interval.labels(namespace, name).set(interval)
                child = self.last_evaluation.labels(namespace, name)
                kept = self._evaluated[(namespace, name)] = (child, interval)
            kept[0].set(at)
            for type_, status in conditions.items():
                key = (namespace, name, type_)
                old = self._condition_labels.get(key)
                if old == status:
                    continue
                if old is not None:
                    self.condition.remove(namespace, name, type_, old)
                self.condition.labels(namespace, name, type_, status).set(1)
                self._condition_labels[key] = status

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._evaluated.pop((namespace, name), None)
            old = self._info_labels.pop((namespace, name), None)
            if old is not None:
                self.info.remove(namespace, name, *old)
            for key in [k for k in self._condition_labels if k[:2] == (namespace, name)]:
                self.condition.remove(*key, self._condition_labels.pop(key))
            for gauge in (self.last_evaluation, self.evaluation_interval):
                try:
                    gauge.remove(namespace, name)
                except KeyError:
                    pass

    def serve(self, host: str, port: int) -> tuple[str, int]:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return server.server_address[0], server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
