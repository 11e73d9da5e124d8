"""Metric gates (runbook 32's go/no-go tables): gauges after a restart, CB trips, blocks outside the
allowlist, all-blocked symbols, and the threshold gauges. Missing series are "no data", never zero."""

from __future__ import annotations

from collections import defaultdict

from ..api import Gates
from .findings import Baseline, Expectation, Finding, Signal
from .log_gates import _logged
from .observations import MetricsObservation, PodMetrics, PodStartup
from .reasons import Reason



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


