"""Status and history (API.md "status"): the conditions, the enforced symbols, and the actions
the adapters execute. The status is the intent: adapters write it first, then act.
"""

from __future__ import annotations

from ..api import State
from .actions import Action, EmitEvent, PatchEnv, RunPreflight
from .ladder import enforced_allowlist
from .observations import JobState
from .scope import within
from .status import DEGRADED, METRICS_AVAILABLE, READY, set_condition, state_conditions
from .reasons import Progress
from .tick import Tick


def actions(t: Tick) -> list[Action]:
    return [*patch_env(t), *t.requests_done, *run_preflight(t), *t.events]


def count_enforced_symbols(t: Tick) -> None:
    """No allowlist (Full, AutoThreshold): every symbol traded counts; the list only grows."""
    s, env = t.s, t.s.applied_env
    watched = s.state in (State.PASSED, State.OBSERVING, State.ROLLED_BACK)
    if watched and env is not None and env.enforce == "1" and not enforced_allowlist(env):
        s.enforced_symbols = sorted(set(s.enforced_symbols) | set(t.all_symbols(True)))
    s.enforced_symbol_count = len(s.enforced_symbols)


def patch_env(t: Tick) -> list[PatchEnv]:
    """(Re-)issue the restart until the Deployment carries its token; in Halted only when it
    narrows what the Deployment has (API.md: Halted changes nothing but a narrowing)."""
    from .outside import managed_now

    s = t.s
    if s.restart is None or s.state is State.SUSPENDED or t.patched() or t.blocker:
        return []
    if s.state is State.HALTED and not within(t.applied, managed_now(t)):
        return []
    return [PatchEnv(t.container or "", dict(s.restart.set_env), tuple(s.restart.remove_env), s.restart.token)]


def run_preflight(t: Tick) -> list[RunPreflight]:
    """Create the preflight Job while it does not exist (the adapter creates if absent)."""
    s, seen = t.s, t.obs.preflight
    pf = s.preflight
    if s.state is State.SUSPENDED or pf is None or pf.state != "Running" or not pf.job_name or t.blocker:
        return []
    if seen is not None and seen.job_name == pf.job_name and seen.state is not JobState.ABSENT:
        return []
    timeout = int(t.spec.preflight.timeout.total_seconds())
    return [RunPreflight(pf.job_name, t.container or "", tuple(t.spec.preflight.command), timeout)]


def sync_conditions(t: Tick) -> None:
    s = t.s
    current = t.current()
    at_target = current is not None and current == t.target()
    values = state_conditions(s, at_target)
    old_ready, old_degraded = s.condition(READY), s.condition(DEGRADED)
    if t.blocker is not None:
        reason, message = t.blocker
        if old_ready is None or old_ready.reason != reason:
            t.events.append(EmitEvent("Warning", reason, message))
        values[READY] = (False, reason, message)
        values["Progressing"] = (False, reason, message)
    if t.not_ready is not None:
        reason, message = t.not_ready
        if old_ready is None or (old_ready.reason, old_ready.message) != (reason, message):
            t.events.append(EmitEvent("Warning", reason, message))
        values[READY] = (False, reason, message)
    if t.degraded is not None:
        reason, message = t.degraded
        if old_degraded is None or (old_degraded.reason, old_degraded.message) != (reason, message):
            t.events.append(EmitEvent("Warning", reason, f"{s.step}: {message}"))
        values[DEGRADED] = (True, reason, message)
    for type_, (value, reason, message) in values.items():
        s.conditions = set_condition(s.conditions, type_, value, reason, message, t.now, t.generation)
    if s.condition(METRICS_AVAILABLE) is None:
        s.conditions = set_condition(s.conditions, METRICS_AVAILABLE, None, Progress.NOT_OBSERVED_YET.value,
                                     "no new pods observed yet", t.now, t.generation)
    s.conditions = [c if c.observed_generation == t.generation else c.model_copy(update={"observed_generation": t.generation})
                    for c in s.conditions]
