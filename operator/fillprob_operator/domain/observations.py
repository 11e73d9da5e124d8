"""What the adapters saw, handed to `decide()` as plain values.

"No data" is represented explicitly (`None`, `available=False`), never as a zero:
missing data is neither go nor no-go (API.md, Gates).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping


@dataclass(frozen=True)
class PodStartup:
    """One pod of the Deployment's newest ReplicaSet and what its log said at start."""

    pod: str
    ready: bool
    # The first line starting with FILL_PROB_THRESHOLD_RESOLUTION_OK / _FAILED or
    # THRESHOLD_RESOLVE_SKIPPED; None when the pod has not logged it (yet).
    resolution_line: str | None
    # Every FILL_PROB_CIRCUIT_BREAKER_TRIPPED line seen in this pod's log.
    circuit_breaker_lines: tuple[str, ...] = ()
    # False when the pod's log could not be read (API error, stream dropped): missing data,
    # never "the startup line is missing" (API.md, Everyday change).
    log_readable: bool = True


@dataclass(frozen=True)
class DeploymentObservation:
    """The managed Deployment as read from the API server."""

    exists: bool
    # metadata.uid: a Deployment deleted and recreated under the same name has a new one.
    uid: str = ""
    generation: int = 0
    observed_generation: int = 0
    container_names: tuple[str, ...] = ()
    # Env of the managed container: literal values; a valueFrom entry maps to None.
    env: Mapping[str, str | None] = field(default_factory=dict)
    # Who last set each env entry of the managed container: the field manager of the newest
    # managedFields entry owning it (e.g. "kubectl-set", "argocd-controller"); "" unknown.
    env_managers: Mapping[str, str] = field(default_factory=dict)
    # The pod template annotation `grinder.io/restart-token` (our restart marker).
    restart_token: str | None = None
    # When that annotation was last written (the managedFields time of the entry owning it):
    # the moment our env patch reached the Deployment. None: unknown.
    restart_token_at: datetime | None = None
    # True when the rollout is finished as `kubectl rollout status` means it.
    rollout_complete: bool = False
    rollout_message: str = ""
    # Pods of the newest ReplicaSet only (post-restart gates look at these alone).
    new_pods: tuple[PodStartup, ...] = ()
    # The restart token on the newest ReplicaSet's pod template: whose restart `new_pods` are.
    # Right after a patch the Deployment carries the new token while its newest ReplicaSet is
    # still the previous one (the Deployment controller has not made the new one yet).
    pods_restart_token: str | None = None


class JobState(str, enum.Enum):
    ABSENT = "Absent"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class PreflightObservation:
    """The preflight Job named in status (Phase 0.2)."""

    job_name: str
    state: JobState
    output: str = ""  # the Job pod's log when it has ended
    exit_code: int | None = None


@dataclass(frozen=True)
class PodMetrics:
    """Instant values for one pod; None = series absent (no data, not zero)."""

    pod: str
    enforce_enabled: float | None = None
    allowlist_enabled: float | None = None
    auto_threshold_bps: float | None = None
    circuit_breaker_trips: float | None = None
    # Counters since the pod started, per symbol.
    blocks_by_symbol: Mapping[str, float] = field(default_factory=dict)
    orders_by_symbol: Mapping[str, float] = field(default_factory=dict)
    # Increase over the recent lookback window, per symbol (block-ratio gate).
    recent_blocks_by_symbol: Mapping[str, float] = field(default_factory=dict)
    recent_orders_by_symbol: Mapping[str, float] = field(default_factory=dict)
    # Prometheus sample timestamp of the newest sample used for this pod.
    sampled_at: datetime | None = None


@dataclass(frozen=True)
class MetricsObservation:
    """Prometheus' view of this rollout's pods (already filtered by selector)."""

    available: bool
    reason: str = ""  # why not available: "PrometheusUnreachable", "SeriesAbsent", ...
    pods: Mapping[str, PodMetrics] = field(default_factory=dict)
    queried_at: datetime | None = None


@dataclass(frozen=True)
class RollbackRequest:
    """A rollback asked for from outside the gates: annotation or Alertmanager."""

    playbook: str  # "R1" | "R2" | "R3"
    reason: str  # ManualRollback | AlertFired
    source: str  # who/why: annotation value + user, or alert labels
    evidence: Mapping[str, object] = field(default_factory=dict)
    # Idempotency key: a request with a key already in history is not applied twice.
    key: str = ""


@dataclass(frozen=True)
class Observations:
    deployment: DeploymentObservation
    metrics: MetricsObservation
    preflight: PreflightObservation | None = None
    rollback_requests: tuple[RollbackRequest, ...] = ()
    # Set when the FillProbRollout's newest spec could not be read: `decide()` is then given
    # the last spec it applied (status.appliedSpec) and keeps guarding (Ready=False InvalidSpec).
    spec_error: str = ""
