"""Log gates (runbook 32, Quick Reference: Log Events): the startup resolution line, circuit-breaker
lines, and the thresholds the new pods logged."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .findings import (
    _KEY_VALUE,
    CIRCUIT_BREAKER_TRIPPED,
    RESOLUTION_FAILED,
    RESOLUTION_OK,
    RESOLVE_SKIPPED,
    Baseline,
    Expectation,
    Finding,
    Signal,
)
from .observations import PodStartup
from .reasons import Reason



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


@lru_cache(maxsize=1024)
def parse_resolution(line: str) -> Resolution:
    """The line parsed, once per line: every tick of a rollout reads its pods' same line (a
    Resolution is frozen)."""
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


