"""The gates' vocabulary: signals, findings, verdicts, and what a step expects of its pods.

Pure evaluation, argo-rollouts style: a `GateResult` is PASS, NO_GO (with every finding and
its evidence), WAIT (the pods are not there yet: not ready, nothing logged) or NO_DATA
(Prometheus down, series absent, pods not scraped yet). Missing data is never a number and
never a no-go on its own (API.md, Gates). What to *do* about a finding is playbooks.py.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..api import AppliedEnv
from .ladder import enforced_allowlist
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


