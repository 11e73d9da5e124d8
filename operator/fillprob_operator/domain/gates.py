"""Gates: what the new pods' logs and metrics say about a step (runbook 32's go/no-go tables).

Pure evaluation, argo-rollouts style: a `GateResult` is PASS, NO_GO (with every finding and
its evidence), WAIT (the pods are not there yet: not ready, nothing logged) or NO_DATA
(Prometheus down, series absent, pods not scraped yet). Missing data is never a number and
never a no-go on its own (API.md, Gates). What to *do* about a finding is playbooks.py.
"""

from __future__ import annotations

import enum
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..api import AppliedEnv, Gates
from .ladder import enforced_allowlist
from .observations import MetricsObservation, PodMetrics, PodStartup
from .reasons import Reason

RESOLUTION_OK = "FILL_PROB_THRESHOLD_RESOLUTION_OK"
RESOLUTION_FAILED = "FILL_PROB_THRESHOLD_RESOLUTION_FAILED"
RESOLVE_SKIPPED = "THRESHOLD_RESOLVE_SKIPPED"
CIRCUIT_BREAKER_TRIPPED = "FILL_PROB_CIRCUIT_BREAKER_TRIPPED"
RECOMMEND_ONLY = "recommend_only"
AUTO_APPLY = "auto_apply"

_KEY_VALUE = re.compile(r"(?<![\w.])([a-z_][a-z0-9_]*)=(\S*)")


class Signal(str, enum.Enum):
    """The rows of API.md's gate table."""

    CIRCUIT_BREAKER_TRIP = "CircuitBreakerTrip"
    ALL_ORDERS_BLOCKED = "AllOrdersBlocked"
    BLOCKS_OUTSIDE_ALLOWLIST = "BlocksOutsideAllowlist"
    RESOLUTION_FAILED = "ResolutionFailed"  # failed / skipped / wrong gauges after restart
    UNEXPECTED_THRESHOLD = "UnexpectedThreshold"  # threshold jump / unexpected threshold
    RESTART_TIMED_OUT = "RestartTimedOut"


class Outcome(str, enum.Enum):
    PASS = "Pass"
    NO_GO = "NoGo"
    WAIT = "Wait"
    NO_DATA = "NoData"


@dataclass(frozen=True)
class Finding:
    signal: Signal
    reason: Reason
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateResult:
    outcome: Outcome
    findings: tuple[Finding, ...] = ()
    message: str = ""  # why WAIT / NO_DATA

    @property
    def evidence(self) -> dict[str, Any]:
        return merge_evidence(f.evidence for f in self.findings)


def merge_evidence(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            elif isinstance(value, (list, tuple)) and isinstance(merged.get(key), list):
                merged[key] = merged[key] + [v for v in value if v not in merged[key]]
            else:
                merged[key] = list(value) if isinstance(value, tuple) else value
    return merged


# --------------------------------------------------------------------------- what to expect


@dataclass(frozen=True)
class Expectation:
    """What the new pods must show, read from the env the operator applied."""

    enforce: bool
    allowlist: tuple[str, ...]  # () = no allowlist (every symbol when enforcing)
    auto_threshold: bool

    @classmethod
    def from_env(cls, env: AppliedEnv) -> "Expectation":
        return cls(env.enforce == "1", enforced_allowlist(env), env.auto_threshold == "1")

    @property
    def mode(self) -> str:
        return AUTO_APPLY if self.auto_threshold else RECOMMEND_ONLY


@dataclass(frozen=True)
class Baseline:
    """Threshold facts a step is judged against.

    `recommended_bps`: the value preflight (or the first startup log) saw for the current
    model/eval dirs; None = unknown, or the dirs changed (a new value is then expected).
    """

    recommended_bps: int | None = None
    threshold_range: tuple[int, int] | None = None


# --------------------------------------------------------------------------- log lines


def key_values(text: str) -> dict[str, str]:
    """`configured_bps=2500 mode=auto_apply` (anywhere in `text`) -> dict; the last one wins."""
    return {m.group(1): m.group(2) for m in _KEY_VALUE.finditer(text)}


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Resolution:
    """A parsed startup resolution line (runbook 32, Quick Reference: Log Events)."""

    kind: str  # "ok" | "failed" | "skipped" | "unknown"
    line: str
    mode: str | None = None
    recommended_bps: int | None = None
    configured_bps: int | None = None
    effective_bps: int | None = None


def parse_resolution(line: str) -> Resolution:
    fields = key_values(line)
    if RESOLUTION_OK in line:
        return Resolution(
            "ok",
            line,
            fields.get("mode"),
            _int(fields.get("recommended_bps")),
            _int(fields.get("configured_bps")),
            _int(fields.get("effective_bps")),
        )
    if RESOLUTION_FAILED in line:
        return Resolution("failed", line)
    if RESOLVE_SKIPPED in line:
        return Resolution("skipped", line)
    return Resolution("unknown", line)


def _resolution_findings(pods: tuple[PodStartup, ...], expect: Expectation | None) -> list[Finding]:
    findings = []
    for pod in pods:
        if pod.resolution_line is None:
            continue
        resolution = parse_resolution(pod.resolution_line)
        evidence = {"logLines": [f"{pod.pod}: {pod.resolution_line}"]}
        if resolution.kind == "failed":
            findings.append(Finding(Signal.RESOLUTION_FAILED, Reason.THRESHOLD_RESOLUTION_FAILED,
                                    f"{pod.pod} logged {RESOLUTION_FAILED}", evidence))
        elif resolution.kind == "skipped":
            findings.append(Finding(Signal.RESOLUTION_FAILED, Reason.MODEL_DIR_UNSET,
                                    f"{pod.pod} logged {RESOLVE_SKIPPED}: set GRINDER_FILL_MODEL_DIR", evidence))
        elif expect is not None and resolution.kind == "ok" and resolution.mode != expect.mode:
            findings.append(Finding(Signal.RESOLUTION_FAILED, Reason.THRESHOLD_RESOLUTION_FAILED,
                                    f"{pod.pod} resolved with mode={resolution.mode}, "
                                    f"the step expects mode={expect.mode}", evidence))
    return findings


def _circuit_breaker_lines(pods: tuple[PodStartup, ...]) -> list[Finding]:
    lines = [f"{p.pod}: {line}" for p in pods for line in p.circuit_breaker_lines]
    if not lines:
        return []
    return [Finding(Signal.CIRCUIT_BREAKER_TRIP, Reason.CIRCUIT_BREAKER_TRIPPED,
                    f"{CIRCUIT_BREAKER_TRIPPED} in the logs of the new pods", {"logLines": lines})]


def _logged(pods: tuple[PodStartup, ...]) -> dict[str, Resolution]:
    """Each pod's successful resolution line, parsed."""
    parsed = {p.pod: parse_resolution(p.resolution_line) for p in pods if p.resolution_line}
    return {pod: r for pod, r in parsed.items() if r.kind == "ok"}


def _threshold_findings(pods: tuple[PodStartup, ...], expect: Expectation, baseline: Baseline) -> list[Finding]:
    """The logged thresholds: a recommended jump (same model/eval), an effective one out of range."""
    findings = []
    logged = _logged(pods)
    recommended = {pod: r.recommended_bps for pod, r in logged.items() if r.recommended_bps is not None}
    if baseline.recommended_bps is not None:
        jumped = {pod: v for pod, v in recommended.items() if v != baseline.recommended_bps}
    else:
        jumped = recommended if len(set(recommended.values())) > 1 else {}  # new pods of one model disagree
    if jumped:
        findings.append(Finding(
            Signal.UNEXPECTED_THRESHOLD, Reason.RECOMMENDED_THRESHOLD_JUMPED,
            f"recommended_bps moved to {sorted(set(jumped.values()))} from {baseline.recommended_bps} "
            "with no model/eval change: investigate the eval report",
            {"recommendedBps": dict(jumped), "baselineRecommendedBps": baseline.recommended_bps,
             "logLines": [f"{p}: {logged[p].line}" for p in jumped]}))
    if expect.auto_threshold and baseline.threshold_range is not None:
        low, high = baseline.threshold_range
        outside = {pod: r.effective_bps for pod, r in logged.items()
                   if r.effective_bps is not None and not low <= r.effective_bps <= high}
        if outside:
            findings.append(Finding(
                Signal.UNEXPECTED_THRESHOLD, Reason.UNEXPECTED_THRESHOLD,
                f"effective_bps {sorted(set(outside.values()))} outside thresholdRange [{low}, {high}]",
                {"effectiveBps": dict(outside), "thresholdRange": [low, high],
                 "logLines": [f"{p}: {logged[p].line}" for p in outside]}))
    return findings


# --------------------------------------------------------------------------- metrics


def _missing(pods: tuple[PodStartup, ...], metrics: MetricsObservation, expect: Expectation) -> list[str]:
    """Why the metrics cannot decide yet (empty: every new pod has every gauge it needs)."""
    if not metrics.available:
        return [metrics.reason or "Prometheus unavailable"]
    why = []
    for pod in pods:
        sample = metrics.pods.get(pod.pod)
        if sample is None:
            why.append(f"no series for pod {pod.pod}")
            continue
        needed = {"enforce_enabled": sample.enforce_enabled, "auto_threshold_bps": sample.auto_threshold_bps,
                  "cb_trips_total": sample.circuit_breaker_trips}
        if expect.enforce:
            needed["enforce_allowlist_enabled"] = sample.allowlist_enabled
        why += [f"{pod.pod}: grinder_router_fill_prob_{name} absent" for name, v in needed.items() if v is None]
    return why


def metrics_missing(pods: tuple[PodStartup, ...], metrics: MetricsObservation, expect: Expectation) -> str:
    """"" when the new pods' metrics are all there, else why not (MetricsAvailable=False)."""
    return "; ".join(_missing(pods, metrics, expect))


def _samples(pods: tuple[PodStartup, ...], metrics: MetricsObservation) -> list[PodMetrics]:
    if not metrics.available:
        return []
    return [metrics.pods[p.pod] for p in pods if p.pod in metrics.pods]


def circuit_breaker_trips(samples: list[PodMetrics]) -> list[Finding]:
    trips = {s.pod: s.circuit_breaker_trips for s in samples if (s.circuit_breaker_trips or 0) > 0}
    if not trips:
        return []
    return [Finding(Signal.CIRCUIT_BREAKER_TRIP, Reason.CIRCUIT_BREAKER_TRIPPED,
                    f"grinder_router_fill_prob_cb_trips_total > 0 on {', '.join(sorted(trips))}", {"cbTrips": trips})]


def _gauge_findings(samples: list[PodMetrics], expect: Expectation) -> list[Finding]:
    """Post-restart: enforce/allowlist gauges as the step expects, threshold gauge > 0."""
    expected: dict[str, float] = {"enforce_enabled": 1.0 if expect.enforce else 0.0}
    if expect.enforce:
        expected["enforce_allowlist_enabled"] = 1.0 if expect.allowlist else 0.0
    wrong: dict[str, dict[str, float]] = {}
    for s in samples:
        actual = {"enforce_enabled": s.enforce_enabled, "enforce_allowlist_enabled": s.allowlist_enabled}
        bad = {name: actual[name] for name, want in expected.items() if actual[name] not in (None, want)}
        if bad:
            wrong[s.pod] = bad  # type: ignore[assignment]
    findings = []
    if wrong:
        findings.append(Finding(Signal.RESOLUTION_FAILED, Reason.THRESHOLD_RESOLUTION_FAILED,
                                f"gauges after restart are not what the step expects ({expected})",
                                {"gauges": wrong, "expectedGauges": expected}))
    zero = {s.pod: s.auto_threshold_bps for s in samples
            if s.auto_threshold_bps is not None and s.auto_threshold_bps <= 0}
    if zero:
        findings.append(Finding(Signal.RESOLUTION_FAILED, Reason.THRESHOLD_RESOLUTION_FAILED,
                                "grinder_router_fill_prob_auto_threshold_bps is 0 (resolution disabled or failed)",
                                {"autoThresholdBps": zero}))
    return findings


def _threshold_gauges(samples: list[PodMetrics]) -> dict[str, float]:
    """Each pod's grinder_router_fill_prob_auto_threshold_bps, where it resolved (> 0)."""
    return {s.pod: s.auto_threshold_bps for s in samples
            if s.auto_threshold_bps is not None and s.auto_threshold_bps > 0}


def _threshold_gauge_findings(
    samples: list[PodMetrics], pods: tuple[PodStartup, ...], expect: Expectation, baseline: Baseline
) -> list[Finding]:
    """auto_apply: the gauge equals the pod's logged effective_bps (and stays in thresholdRange);
    recommend_only: the gauge is the recommended value, so a move is a recommended jump."""
    gauges, logged = _threshold_gauges(samples), _logged(pods)
    findings = []
    if not expect.auto_threshold:
        if baseline.recommended_bps is None:
            return []
        moved = {pod: v for pod, v in gauges.items() if v != baseline.recommended_bps}
        if moved:
            findings.append(Finding(
                Signal.UNEXPECTED_THRESHOLD, Reason.RECOMMENDED_THRESHOLD_JUMPED,
                f"recommended threshold gauge moved to {sorted(set(moved.values()))} from "
                f"{baseline.recommended_bps} with no model/eval change: investigate the eval report",
                {"autoThresholdBps": moved, "baselineRecommendedBps": baseline.recommended_bps}))
        return findings
    off = {pod: {"gauge": v, "loggedEffectiveBps": logged[pod].effective_bps} for pod, v in gauges.items()
           if pod in logged and logged[pod].effective_bps is not None and v != logged[pod].effective_bps}
    if off:
        findings.append(Finding(Signal.UNEXPECTED_THRESHOLD, Reason.UNEXPECTED_THRESHOLD,
                                "grinder_router_fill_prob_auto_threshold_bps differs from the logged effective_bps",
                                {"autoThresholdBps": off}))
    if baseline.threshold_range is not None:
        low, high = baseline.threshold_range
        outside = {pod: v for pod, v in gauges.items() if not low <= v <= high}
        if outside:
            findings.append(Finding(
                Signal.UNEXPECTED_THRESHOLD, Reason.UNEXPECTED_THRESHOLD,
                f"effective threshold {sorted(set(outside.values()))} outside thresholdRange [{low}, {high}]",
                {"autoThresholdBps": outside, "thresholdRange": [low, high]}))
    return findings


def blocks_outside_allowlist(samples: list[PodMetrics], expect: Expectation) -> list[Finding]:
    """Shadow must show zero blocks; Canary/Expand only block allowlisted symbols. n/a in Full."""
    if expect.enforce and not expect.allowlist:
        return []
    outside: dict[str, dict[str, float]] = {}
    for s in samples:
        bad = {sym: n for sym, n in s.blocks_by_symbol.items()
               if n > 0 and (not expect.enforce or sym not in expect.allowlist)}
        if bad:
            outside[s.pod] = bad
    if not outside:
        return []
    what = "blocks while enforcement is off" if not expect.enforce else "blocks for symbols outside the allowlist"
    return [Finding(Signal.BLOCKS_OUTSIDE_ALLOWLIST, Reason.BLOCKS_OUTSIDE_ALLOWLIST,
                    f"grinder_router_fill_prob_blocks_total: {what}", {"blocksOutsideAllowlist": outside})]


def all_orders_blocked(samples: list[PodMetrics], expect: Expectation, gates: Gates) -> list[Finding]:
    """A symbol whose recent block ratio (over >= minOrders orders) reaches maxBlockRatio."""
    if not expect.enforce:
        return []
    blocks: dict[str, float] = defaultdict(float)
    orders: dict[str, float] = defaultdict(float)
    for s in samples:
        for sym, n in s.recent_blocks_by_symbol.items():
            blocks[sym] += n
        for sym, n in s.recent_orders_by_symbol.items():
            orders[sym] += n
    blocked = {}
    for sym, n_orders in orders.items():
        enforced = not expect.allowlist or sym in expect.allowlist
        if enforced and n_orders >= gates.min_orders and blocks[sym] / n_orders >= gates.max_block_ratio:
            blocked[sym] = {"blocks": blocks[sym], "orders": n_orders, "ratio": round(blocks[sym] / n_orders, 4)}
    if not blocked:
        return []
    return [Finding(Signal.ALL_ORDERS_BLOCKED, Reason.ALL_ORDERS_BLOCKED,
                    f"all orders blocked for {', '.join(sorted(blocked))} (block ratio >= {gates.max_block_ratio})",
                    {"blockedSymbols": blocked})]


# --------------------------------------------------------------------------- the two gates


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
    not_ready = [p.pod for p in pods if not p.ready or p.resolution_line is None]
    waiting = "no pods in the new ReplicaSet yet" if not pods else (
        f"waiting for {', '.join(not_ready)} to be ready and log the threshold resolution" if not_ready else "")
    return _verdict(findings, waiting, metrics_missing(pods, metrics, expect))


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
    missing = metrics_missing(pods, metrics, expect) if pods else "no pods in the new ReplicaSet to observe"
    return _verdict(findings, "", missing)
