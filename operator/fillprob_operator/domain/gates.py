"""Gates: what the new pods' logs and metrics say about a step (runbook 32's go/no-go tables).

Pure evaluation, argo-rollouts style: a `GateResult` is PASS, NO_GO (with every finding and
its evidence), WAIT (the pods are not there yet: not ready, nothing logged) or NO_DATA
(Prometheus down, series absent, pods not scraped yet, a pod log that cannot be read). Missing
data is never a number and never a no-go on its own (API.md, Gates and Everyday change). What
to *do* about a finding is playbooks.py. The checks themselves: log_gates.py, metric_gates.py.
"""

from __future__ import annotations

from ..api import Gates
from .findings import (  # noqa: F401 (re-exported: the gates' vocabulary)
    AUTO_APPLY,
    CIRCUIT_BREAKER_TRIPPED,
    RECOMMEND_ONLY,
    RESOLUTION_FAILED,
    RESOLUTION_OK,
    RESOLVE_SKIPPED,
    Baseline,
    Expectation,
    Finding,
    GateResult,
    Outcome,
    Signal,
    merge_evidence,
)
from .log_gates import (  # noqa: F401
    Resolution,
    _circuit_breaker_lines,
    _resolution_findings,
    _threshold_findings,
    key_values,
    parse_resolution,
)
from .metric_gates import (  # noqa: F401
    _gauge_findings,
    _samples,
    _threshold_gauge_findings,
    all_orders_blocked,
    blocks_outside_allowlist,
    circuit_breaker_trips,
    metrics_missing,
)
from .observations import MetricsObservation, PodStartup

# The signals that stop the bleeding wherever enforcement is on, even in Halted (API.md,
# Everyday change: "In Halted the only action allowed is a narrowing").
DANGER = (Signal.CIRCUIT_BREAKER_TRIP, Signal.ALL_ORDERS_BLOCKED)


def unreadable_logs(pods: tuple[PodStartup, ...]) -> str:
    """Why logs are missing data ("" when every new pod's log could be read)."""
    bad = [p.pod for p in pods if not p.log_readable]
    return f"log of {', '.join(bad)} cannot be read" if bad else ""



def _verdict(findings: list[Finding], waiting: str, missing: str) -> GateResult:
    if findings:
        return GateResult(Outcome.NO_GO, tuple(findings))
    if waiting:
        return GateResult(Outcome.WAIT, message=waiting)
    if missing:
        return GateResult(Outcome.NO_DATA, message=missing)
    return GateResult(Outcome.PASS)


def post_restart(
    pods: tuple[PodStartup, ...], metrics: MetricsObservation, expect: Expectation, baseline: Baseline
) -> GateResult:
    """Runbook 32 "Post-restart verification", on the new pods only."""
    findings = _resolution_findings(pods, expect) + _circuit_breaker_lines(pods)
    findings += _threshold_findings(pods, expect, baseline)
    samples = _samples(pods, metrics)
    findings += circuit_breaker_trips(samples) + _gauge_findings(samples, expect)
    findings += _threshold_gauge_findings(samples, pods, expect, baseline)
    not_ready = [p.pod for p in pods if not p.ready or (p.resolution_line is None and p.log_readable)]
    waiting = "no pods in the new ReplicaSet yet" if not pods else (
        f"waiting for {', '.join(not_ready)} to be ready and log the threshold resolution" if not_ready else "")
    missing = "; ".join(filter(None, [unreadable_logs(pods), metrics_missing(pods, metrics, expect)]))
    return _verdict(findings, waiting, missing)


def during_window(
    pods: tuple[PodStartup, ...], metrics: MetricsObservation, expect: Expectation, baseline: Baseline, gates: Gates
) -> GateResult:
    """Runbook 32 "Observation window" / Go-No-Go, on the new pods only (guarding never ends)."""
    findings = _resolution_findings(pods, None) + _circuit_breaker_lines(pods)
    samples = _samples(pods, metrics)
    findings += circuit_breaker_trips(samples)
    findings += blocks_outside_allowlist(samples, expect)
    findings += all_orders_blocked(samples, expect, gates)
    findings += _threshold_gauge_findings(samples, pods, expect, baseline)
    missing = "; ".join(filter(None, [unreadable_logs(pods), metrics_missing(pods, metrics, expect)]))
    return _verdict(findings, "", missing if pods else "no pods in the new ReplicaSet to observe")


def danger(
    pods: tuple[PodStartup, ...], metrics: MetricsObservation, expect: Expectation, gates: Gates
) -> list[Finding]:
    """CB trips (log or counter) and all-blocked symbols: checked wherever enforcement is on."""
    if not expect.enforce:
        return []
    samples = _samples(pods, metrics)
    return _circuit_breaker_lines(pods) + circuit_breaker_trips(samples) + all_orders_blocked(samples, expect, gates)
