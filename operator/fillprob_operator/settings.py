"""The operator's own configuration, read once from the environment at startup.

Everything a FillProbRollout does not say itself (where Prometheus is by default, where the
operator serves its metrics, which namespaces it watches) is set here, by env variables, so
the chart, `make run` and the testbed all configure it the same way.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Mapping

# Prometheus' own default listen address; the chart and the testbed set FILLPROB_PROMETHEUS_URL.
DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
DEFAULT_METRICS_ADDR = "127.0.0.1:8080"
_LOOKBACK = re.compile(r"^[1-9][0-9]*(ms|s|m|h|d)$")


@dataclass(frozen=True)
class Settings:
    # Used when a FillProbRollout has no `spec.prometheus.url`.
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    # Window of the `increase(...[L])` queries behind the block-ratio gate.
    prometheus_lookback: str = "1m"
    prometheus_timeout_seconds: float = 10.0
    kubernetes_timeout_seconds: float = 30.0
    # "host:port" for the operator's own /metrics; empty means do not serve.
    metrics_addr: str = DEFAULT_METRICS_ADDR
    # Empty: all namespaces.
    namespaces: tuple[str, ...] = ()
    # "standalone" (one replica, no peering) or the name of a KopfPeering object.
    peering: str = "standalone"
    # kopf pauses every replica that sees a live peer of higher OR EQUAL priority, so replicas
    # must differ: by default the earlier-started replica wins (minus its start time in ms),
    # so a replica that starts beside an active one stays standby instead of taking over.
    peering_priority: int = 0
    # Seconds a replica's peering record lives without a keepalive: a standby takes over at
    # most this long after the active replica died.
    peering_lifetime: int = 30
    # Threads for the blocking Kubernetes and Prometheus clients.
    io_threads: int = 16
    # Pod logs followed at once; a pod past it is missing data.
    log_streams: int = 1000
    # How they are read: "http2" (tasks on the event loop, many streams per HTTP/2 connection;
    # a proxied or plain-HTTP API server falls back to threads) or "threads" (a thread and a
    # connection per stream).
    log_transport: str = "http2"
    # FillProbRollouts, Deployments, ReplicaSets, Pods and Jobs of the watched namespaces from
    # watch-backed caches (adapters/watches.py); off: every tick reads them directly.
    watch_caches: bool = True
    # glibc arenas at most (allocator.py): the threads take turns on the GIL, so a few arenas
    # cost no waiting and hold far less than one per thread; 0: glibc's default.
    malloc_arenas: int = 2

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        if not self.metrics_addr:
            return None
        host, _, port = self.metrics_addr.rpartition(":")
        return (host or "0.0.0.0"), int(port)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, now: float | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        started = time.time() if now is None else now
        priority_text = env.get("FILLPROB_PEERING_PRIORITY", "").strip()
        try:
            priority = int(priority_text) if priority_text else -int(started * 1000)
        except ValueError:
            raise ValueError(f"FILLPROB_PEERING_PRIORITY={priority_text!r}: want an integer") from None
        lifetime_text = env.get("FILLPROB_PEERING_LIFETIME", "30").strip()
        if not lifetime_text.isdigit() or not 15 <= int(lifetime_text) <= 3600:
            raise ValueError(
                f"FILLPROB_PEERING_LIFETIME={lifetime_text!r}: want whole seconds from 15 to 3600 "
                "(kopf renews the record 5-10 s before it expires)"
            )
        lookback = env.get("FILLPROB_PROMETHEUS_LOOKBACK", "1m").strip()
        if not _LOOKBACK.match(lookback):
            raise ValueError(
                f"FILLPROB_PROMETHEUS_LOOKBACK={lookback!r}: want a PromQL duration like 1m or 90s"
            )
        metrics_addr = env.get("FILLPROB_METRICS_ADDR", DEFAULT_METRICS_ADDR).strip()
        if metrics_addr.lower() in ("off", "none", "0"):
            metrics_addr = ""
        if metrics_addr and not re.match(r"^[^:]*:[0-9]+$", metrics_addr):
            raise ValueError(f"FILLPROB_METRICS_ADDR={metrics_addr!r}: want host:port")
        arenas_text = env.get("FILLPROB_MALLOC_ARENAS", "2").strip()
        if not arenas_text.isdigit() or int(arenas_text) > 64:
            raise ValueError(
                f"FILLPROB_MALLOC_ARENAS={arenas_text!r}: want a whole number from 0 (glibc's default) to 64"
            )
        namespaces = tuple(
            ns.strip() for ns in env.get("FILLPROB_NAMESPACES", "").split(",") if ns.strip()
        )
        return cls(
            # PROMETHEUS_URL is what `.testbed/env` exports; FILLPROB_PROMETHEUS_URL wins.
            prometheus_url=(
                env.get("FILLPROB_PROMETHEUS_URL")
                or env.get("PROMETHEUS_URL")
                or DEFAULT_PROMETHEUS_URL
            ).rstrip("/"),
            prometheus_lookback=lookback,
            prometheus_timeout_seconds=float(env.get("FILLPROB_PROMETHEUS_TIMEOUT", "10")),
            kubernetes_timeout_seconds=float(env.get("FILLPROB_KUBERNETES_TIMEOUT", "30")),
            metrics_addr=metrics_addr,
            namespaces=namespaces,
            peering=env.get("FILLPROB_PEERING", "standalone").strip() or "standalone",
            peering_priority=priority,
            peering_lifetime=int(lifetime_text),
            io_threads=max(2, int(env.get("FILLPROB_IO_THREADS", "16"))),
            log_streams=max(1, int(env.get("FILLPROB_LOG_STREAMS", "1000"))),
            log_transport=log_transport(env.get("FILLPROB_LOG_TRANSPORT", "http2")),
            watch_caches=env.get("FILLPROB_WATCH_CACHES", "on").strip().lower() not in ("off", "0", "false", "no"),
            malloc_arenas=int(arenas_text),
        )


LOG_TRANSPORTS = ("http2", "threads")


def log_transport(text: str) -> str:
    value = text.strip().lower() or "http2"
    if value not in LOG_TRANSPORTS:
        raise ValueError(f"FILLPROB_LOG_TRANSPORT={text!r}: expected one of {', '.join(LOG_TRANSPORTS)}")
    return value
