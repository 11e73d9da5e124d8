"""Guarding (runbook 32 "Observation window", API.md "Enforcement is always guarded"): the no-go
gates on the pods carrying our restart token, every tick, in every state but Suspended.

Guarding never ends: a Passed step is still watched. In Halted the only action allowed is a
narrowing: a CB trip or an all-blocked symbol there applies R1. Missing data (metrics, logs)
holds the window (MetricsAvailable=False) and never decides anything on its own.
"""

from __future__ import annotations

from typing import Any

from ..api import Playbook, State
from .durations import format_duration
from .findings import Baseline, Expectation, GateResult, Outcome
from .gates import DANGER, danger, during_window, metrics_missing, unreadable_logs
from .reasons import Progress, Reason
from .status import METRICS_AVAILABLE, set_condition
from .tick import Tick, rfc3339


def expectation(t: Tick) -> Expectation:
    return Expectation.from_env(t.applied)


def baseline(t: Tick) -> Baseline:
    """The recommended threshold counts only for the model/eval dirs it was seen with."""
    s = t.s
    same_model = s.preflight is not None and t.model_dirs() == (s.preflight.model_dir, s.preflight.eval_dir)
    recommended = s.threshold.recommended_bps if (s.threshold and same_model) else None
    r = t.spec.gates.threshold_range
    return Baseline(recommended, (r.min_bps, r.max_bps) if r else None)


def evaluate(t: Tick) -> GateResult | None:
    """The window gates on our pods (None when the pods are not ours to judge)."""
    if not t.our_pods():
        return None
    return during_window(t.obs.deployment.new_pods, t.obs.metrics, expectation(t), baseline(t), t.spec.gates)


def watch(t: Tick) -> GateResult | None:
    """Window gates; a no-go is answered at once. Returns the result when the step may move on."""
    from . import rollback

    result = evaluate(t)
    if result is None:
        return None
    if result.outcome is Outcome.NO_GO:
        rollback.no_go(t, list(result.findings))
        return None
    track_metrics(t, result)
    return result if result.outcome is Outcome.PASS else None


def first(t: Tick) -> bool:
    """Before anything changes the restart token this tick (a spec change, a redo, a restore):
    a CB trip or an all-blocked symbol on the pods enforcing now is answered first, with every
    finding of the window gates (API.md: whenever ENFORCE=1 the no-go gates run). True when it
    narrowed (or halted); the handlers then find the new restart's pods not ours yet."""
    from . import rollback

    s = t.s
    if s.state in (State.PENDING, State.SUSPENDED) or not t.our_pods() or not t.enforcing():
        return False
    result = evaluate(t)
    if result is None or result.outcome is not Outcome.NO_GO:
        return False
    if not any(f.signal in DANGER for f in result.findings):
        return False
    if s.state is State.HALTED:
        rollback.answer(t, [f for f in result.findings if f.signal in DANGER], Playbook.R1)
    else:
        rollback.no_go(t, list(result.findings))
    return True


def danger_only(t: Tick) -> None:
    """While a restart is in flight (Restarting, Verifying before the rollout is done): CB trips
    and all-blocked symbols on our new pods are answered by the gate table at once."""
    from . import rollback

    if not t.our_pods() or not t.enforcing():
        return
    findings = danger(t.obs.deployment.new_pods, t.obs.metrics, expectation(t), t.spec.gates)
    if findings:
        rollback.no_go(t, findings)


def halted(t: Tick) -> None:
    """Halted with enforcement on: a CB trip or an all-blocked symbol applies R1 (narrowing only)."""
    from . import rollback

    if not t.our_pods() or not t.enforcing():
        return
    result = evaluate(t)
    if result is None:
        return
    findings = [f for f in result.findings if f.signal in DANGER]
    if findings:
        rollback.answer(t, findings, Playbook.R1)
    elif result.outcome is not Outcome.NO_GO:
        track_metrics(t, result)


def while_suspended(t: Tick) -> None:
    """Report only: MetricsAvailable, and a no-go (Degraded=True, one Event); acted on at resume."""
    s = t.s
    if not t.obs.deployment.exists or not t.our_pods() or s.resume_state in (State.PENDING, State.PREFLIGHT):
        return
    result = evaluate(t)
    if result is None:
        return
    if result.outcome is Outcome.NO_GO:
        decisive = result.findings[0]
        message = ("seen while suspended, acted on at resume if still present: "
                   + "; ".join(dict.fromkeys(f.message for f in result.findings)))
        t.degraded = (decisive.reason.value, message)
    pods = t.obs.deployment.new_pods
    missing = metrics_missing(pods, t.obs.metrics, expectation(t)) if pods else "no new pods"
    track_missing(t, "; ".join(filter(None, [unreadable_logs(pods), missing])))


def track_metrics(t: Tick, result: GateResult) -> None:
    track_missing(t, result.message if result.outcome is Outcome.NO_DATA else "")


def track_missing(t: Tick, missing: str) -> None:
    """MetricsAvailable; while it is False the window does not count (it is extended)."""
    from . import walking

    s = t.s
    old = s.condition(METRICS_AVAILABLE)
    was_available = old is None or old.status != "False"
    if not missing and old is not None and old.status == "True":
        return
    if missing and not was_available:
        return
    if not missing:
        message = "the new pods' metrics and logs are readable"
        if old is not None and old.status == "False":
            lost = walking.pause(t, old.last_transition_time)
            if lost:
                message += f"; window extended by {format_duration(lost)} to {rfc3339(s.observation_ends_at)}"  # type: ignore[arg-type]
        s.conditions = set_condition(s.conditions, METRICS_AVAILABLE, True, Progress.METRICS_RECEIVED.value,
                                     message, t.now, t.generation)
        if old is not None and old.status == "False":
            t.transition("MetricsAvailable", Progress.METRICS_RECEIVED, message, {"since": rfc3339(old.last_transition_time)},
                         sets_reason=False)
        return
    message = f"{missing}: holding (missing data is neither go nor no-go)"
    s.conditions = set_condition(s.conditions, METRICS_AVAILABLE, False, Reason.METRICS_UNAVAILABLE.value,
                                 message, t.now, t.generation)
    t.transition("MetricsUnavailable", Reason.METRICS_UNAVAILABLE, message, {"why": missing}, warning=True,
                 sets_reason=False)


def gauges(t: Tick) -> dict[str, Any]:
    """Evidence: the new pods' gauges and counters as Prometheus reported them."""
    m = t.obs.metrics
    if not m.available:
        return {}
    pods = [m.pods[p.pod] for p in t.obs.deployment.new_pods if p.pod in m.pods]
    return {
        "cbTrips": {p.pod: p.circuit_breaker_trips for p in pods},
        "enforceEnabled": {p.pod: p.enforce_enabled for p in pods},
        "autoThresholdBps": {p.pod: p.auto_threshold_bps for p in pods},
        "blocks": {p.pod: sum(p.blocks_by_symbol.values()) for p in pods},
    }
