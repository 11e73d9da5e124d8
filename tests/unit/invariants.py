"""The rollout's promises as named functions over (before, after, observations).

Each function states one promise of API.md (quoted in its docstring) and raises
AssertionError with what broke it. `test_invariants.py` checks every one of them after
every step of a hypothesis state machine that drives the real `decide()`; a counterexample
it finds becomes a named test in `test_invariant_regressions.py`.

`before` is the world as `decide()` saw it (the status it was given, the Deployment after
whatever people or the cluster did since the last tick); `after` is the world once the
tick's actions took effect (what the adapters do). Enforcement scope is always read from
the Deployment's managed env (the truth the pods start from), never from status alone.

Deliberately independent of the domain's internals (ladder.py, playbooks.py): the ladder and
the env table are re-derived here from API.md, so a rewrite of the domain is checked, not
mirrored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from fillprob_operator.api import FillProbRolloutSpec, HistoryEntry, RolloutStatus, State
from fillprob_operator.domain.actions import PatchEnv, RunPreflight
from fillprob_operator.domain.observations import Observations

ENFORCE = "GRINDER_FILL_MODEL_ENFORCE"
AUTO_THRESHOLD = "GRINDER_FILL_PROB_AUTO_THRESHOLD"
ENFORCE_SYMBOLS = "GRINDER_FILL_PROB_ENFORCE_SYMBOLS"
MIN_BPS = "GRINDER_FILL_PROB_MIN_BPS"
MANAGED_KEYS = (ENFORCE, ENFORCE_SYMBOLS, AUTO_THRESHOLD, MIN_BPS)

HISTORY_LIMIT = 100
# States in which the rollout walks (or stands Passed) under its spec.
WALKING = (State.PENDING, State.PREFLIGHT, State.RESTARTING, State.VERIFYING, State.OBSERVING, State.PASSED)
STOPPED = (State.HALTED, State.ROLLED_BACK)
EXTERNAL_REASONS = ("ManualRollback", "AlertFired")


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class DeploymentView:
    """The managed Deployment as it really is (not as an adapter managed to read it)."""

    exists: bool
    uid: str = ""
    env: Mapping[str, str | None] = field(default_factory=dict)
    token: str | None = None
    rollout_complete: bool = False
    # The env and restart token the running new pods were started with (None: no pods).
    pods_env: Mapping[str, str | None] | None = None
    pods_token: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """One side of a tick. Model facts that no single status can tell are carried here."""

    spec: FillProbRolloutSpec
    status: RolloutStatus | None
    deployment: DeploymentView
    now: datetime
    # ---- before only: what the model knows about the past ----
    # A RolledBack/Halted status was seen and no spec change other than `suspend` since.
    climb_blocked: bool = False
    # targetPhase was lowered and no tick has been able to act on it yet.
    target_lowered: bool = False
    # A spec change other than `suspend` that no active tick has acted on yet.
    spec_changed: bool = False
    # ---- after only: the tick's result ----
    actions: tuple[Any, ...] = ()
    # decide() again with the same inputs, given the status through a JSON round trip.
    round_trip: Any = None
    original: Any = None
    # decide() once more, after the actions took effect (same clock).
    again: Any = None
    # decide() with the data the adapters failed to read (metrics, logs) filled in from the
    # world; None when nothing was missing or there is no truth to fill in.
    counterfactual: Any = None


# --------------------------------------------------------------------------- scope


@dataclass(frozen=True)
class Scope:
    """Enforcement scope (API.md, Everyday change): which symbols are enforced, auto threshold."""

    symbols: frozenset[str] | None  # None: every symbol (ENFORCE=1, ENFORCE_SYMBOLS empty/unset)
    auto: bool

    def within(self, other: "Scope") -> bool:
        """Not wider than `other` in any respect."""
        if self.symbols is None:
            symbols_ok = other.symbols is None
        else:
            symbols_ok = other.symbols is None or self.symbols <= other.symbols
        return symbols_ok and (other.auto or not self.auto)

    def describe(self) -> str:
        symbols = "all symbols" if self.symbols is None else (",".join(sorted(self.symbols)) or "nothing")
        return f"enforcing {symbols}, AUTO_THRESHOLD={'1' if self.auto else '0'}"


def parse_symbols(value: str | None) -> frozenset[str]:
    return frozenset(s.strip() for s in (value or "").split(",") if s.strip())


def scope_of(env: Mapping[str, Any]) -> Scope:
    """ENFORCE 0/unset: nothing enforced (AUTO_THRESHOLD then decides nothing either: no order
    is blocked whatever the threshold); ENFORCE=1 with ENFORCE_SYMBOLS empty/unset: all."""
    auto = env.get(AUTO_THRESHOLD) == "1"
    if env.get(ENFORCE) != "1":
        return Scope(frozenset(), False)
    symbols = parse_symbols(env.get(ENFORCE_SYMBOLS))
    return Scope(symbols or None, auto)


def applied_scope(status: RolloutStatus | None) -> Scope | None:
    if status is None or status.applied_env is None:
        return None
    env = status.applied_env
    return scope_of({ENFORCE: env.enforce, ENFORCE_SYMBOLS: env.enforce_symbols, AUTO_THRESHOLD: env.auto_threshold})


# --------------------------------------------------------------------------- the ladder (API.md)


@dataclass(frozen=True)
class Rung:
    phase: str
    batch: int | None
    scope: Scope


def ladder(spec: FillProbRolloutSpec) -> list[Rung]:
    """Shadow -> Canary -> Expand 1..N -> Full -> AutoThreshold, with API.md's env table."""
    rungs = [Rung("Shadow", None, Scope(frozenset(), False))]
    if spec.canary_symbols:
        allow = frozenset(spec.canary_symbols)
        rungs.append(Rung("Canary", None, Scope(allow, False)))
        for k, batch in enumerate(spec.expand_batches, start=1):
            allow = allow | frozenset(batch)
            rungs.append(Rung("Expand", k, Scope(allow, False)))
        rungs.append(Rung("Full", None, Scope(None, False)))
        rungs.append(Rung("AutoThreshold", None, Scope(None, True)))
    return rungs


_RANK = {"Preflight": 0, "Shadow": 1, "Canary": 2, "Expand": 3, "Full": 4, "AutoThreshold": 5}


def rung_index(rungs: list[Rung], phase: str, batch: int | None) -> int:
    """The highest rung not above (phase, batch); -1 for Preflight."""
    key = (_RANK[phase], batch or 0)
    below = [i for i, r in enumerate(rungs) if (_RANK[r.phase], r.batch or 0) <= key]
    return below[-1] if below else -1


def status_rung(rungs: list[Rung], status: RolloutStatus | None) -> int:
    if status is None:
        return -1
    return rung_index(rungs, status.phase.value, status.batch)


def target_rung(spec: FillProbRolloutSpec) -> int:
    return rung_index(ladder(spec), spec.target_phase.value, 10**6)


def effective_state(status: RolloutStatus | None, spec: FillProbRolloutSpec) -> State | None:
    """The state the tick acts from: a Suspended rollout being resumed acts from its resume state."""
    if status is None:
        return None
    if status.state is State.SUSPENDED and not spec.suspend and status.resume_state is not None:
        return status.resume_state
    return status.state


# --------------------------------------------------------------------------- helpers


def new_history(before: list[HistoryEntry], after: list[HistoryEntry]) -> list[HistoryEntry]:
    """The entries this tick appended (history is newest last, bounded)."""
    for n in range(len(after) + 1):
        if (before + after[len(after) - n:])[-HISTORY_LIMIT:] == after:
            return after[len(after) - n:]
    return after


def new_rollback(before: RolloutStatus | None, after: RolloutStatus | None) -> bool:
    if after is None or after.last_rollback is None:
        return False
    return before is None or before.last_rollback != after.last_rollback


def reacted(before: RolloutStatus | None, after: RolloutStatus | None, env_before: Mapping[str, Any],
            env_after: Mapping[str, Any]) -> bool:
    """A no-go reaction: a rollback recorded, a newly Halted/RolledBack state, or a narrower env."""
    if after is None:
        return False
    old_state = before.state if before is not None else None
    if before is not None and before.state is State.SUSPENDED:
        old_state = before.resume_state  # resuming into Halted is not a new halt
    if after.state in STOPPED and after.state is not old_state:
        return True
    if new_rollback(before, after):
        return True
    old, new = scope_of(env_before), scope_of(env_after)
    return new != old and new.within(old)


def env_after(env: Mapping[str, Any], token: str | None, actions: tuple[Any, ...]) -> tuple[dict, str | None]:
    """What the adapters make of the PatchEnv actions (skipped when the token is already there)."""
    env, token = dict(env), token
    for action in actions:
        if isinstance(action, PatchEnv):
            if action.restart_token and action.restart_token == token:
                continue
            for key in action.remove_env:
                env.pop(key, None)
            env.update(action.set_env)
            token = action.restart_token
    return env, token


def data_missing(observations: Observations) -> list[str]:
    d = observations.deployment
    why = []
    if not d.exists:
        why.append("Deployment missing")
        return why
    if not observations.metrics.available:
        why.append(f"metrics unavailable ({observations.metrics.reason})")
    unreadable = [p.pod for p in d.new_pods if not p.log_readable]
    if unreadable:
        why.append(f"logs unreadable: {', '.join(unreadable)}")
    return why


def restoring_recreated(before: Snapshot, observations: Observations, new: Scope) -> bool:
    """Design 7: a Deployment without our restart token (recreated, new uid) gets the rung's env
    again; that is the operator's own last applied env, not a widening of it."""
    status = before.status
    if status is None or status.restart is None:
        return False
    if observations.deployment.restart_token == status.restart.token:
        return False
    ours = applied_scope(status)
    return ours is not None and new.within(ours)


def operator_widened(before: Snapshot, after: Snapshot) -> tuple[Scope, Scope] | None:
    """(old, new) when the tick left the Deployment enforcing more than before it."""
    if not (before.deployment.exists and after.deployment.exists):
        return None
    old, new = scope_of(before.deployment.env), scope_of(after.deployment.env)
    return None if new.within(old) else (old, new)


def _where(status: RolloutStatus | None) -> str:
    if status is None:
        return "no status"
    return f"{status.state.value} at {status.step} ({status.reason})"


# --------------------------------------------------------------------------- I1


def why_widening_is_allowed(before: Snapshot, after: Snapshot, observations: Observations, new: Scope) -> str | None:
    """"climb": the next rung, right after the rung below Passed (on this tick or before);
    "restore": the operator's own last applied env put back on a recreated Deployment (design 7);
    "redo": the current rung redone under a new spec while walking. None: not allowed."""
    rungs = ladder(after.spec)
    here = status_rung(rungs, before.status)
    state = effective_state(before.status, after.spec)
    passed_now = state is State.OBSERVING and after.status is not None and any(
        e.reason == "ObservationPassed" for e in new_history(before.status.history, after.status.history))
    if restoring_recreated(before, observations, new):
        return "restore"
    if before.spec_changed and state in WALKING and new.within(rungs[max(here, 0)].scope):
        return "redo"
    if (state is State.PASSED or passed_now) and here + 1 < len(rungs) and new.within(rungs[here + 1].scope):
        if here < 0 or not new.within(rungs[here].scope):  # re-widening the rung itself is no climb
            return "climb"
    return None


def enforcement_widens_only_right_after_the_step_below_passed(
    before: Snapshot, after: Snapshot, observations: Observations
) -> None:
    """I1. API.md, Walking the ladder: "Up: one step at a time, only after the step below has
    **Passed**". Everyday change: "A narrower change is a person's emergency lever: it is kept,
    never re-widened."

    Allowed widenings of the Deployment's managed env: the next rung right after the rung below
    Passed; the operator's own last applied env put back on a recreated Deployment (design 7);
    the current rung redone under a new spec while walking.
    """
    widened = operator_widened(before, after)
    if widened is None:
        return
    old, new = widened
    if why_widening_is_allowed(before, after, observations, new) is not None:
        return
    raise AssertionError(
        f"I1: enforcement widened from {old.describe()} to {new.describe()} while {_where(before.status)}; "
        f"env before {dict(before.deployment.env)}, actions {after.actions}"
    )


# --------------------------------------------------------------------------- I2


def missing_data_never_widens_nor_rolls_back(before: Snapshot, after: Snapshot, observations: Observations) -> None:
    """I2. API.md, Gates: "Missing data (Prometheus down, series absent, pods not scraped yet) is
    neither go nor no-go ... it never promotes and never rolls back on missing data alone."
    Everyday change: "a pod log that cannot be read is missing data, not a missing startup line".

    With data missing, no widening (other than design 7's restore); a rollback or halt only when
    decide() with the missing data filled in from the world would have reacted too.
    """
    missing = data_missing(observations)
    if not missing:
        return
    widened = operator_widened(before, after)
    if widened is not None and why_widening_is_allowed(before, after, observations, widened[1]) == "climb":
        raise AssertionError(
            f"I2: {'; '.join(missing)}, yet climbed from {widened[0].describe()} to "
            f"{widened[1].describe()} ({_where(before.status)} -> {_where(after.status)})"
        )
    if not reacted(before.status, after.status, before.deployment.env, after.deployment.env):
        return
    if not observations.deployment.exists:
        if observations.rollback_requests:
            return
        raise AssertionError(f"I2: the Deployment is missing, yet {_where(before.status)} -> {_where(after.status)}")
    cf = after.counterfactual
    if cf is None:
        return
    cf_env, _ = env_after(before.deployment.env, before.deployment.token, cf.actions)
    if not reacted(before.status, cf.status, before.deployment.env, cf_env):
        raise AssertionError(
            f"I2: {'; '.join(missing)} alone made {_where(before.status)} -> {_where(after.status)}; with the "
            f"data present decide() says {_where(cf.status)}; last history "
            f"{[(h.action, h.reason) for h in new_history((before.status.history if before.status else []), after.status.history)]}"
        )


# --------------------------------------------------------------------------- I3


def rollbacks_only_narrow(before: Snapshot, after: Snapshot, observations: Observations) -> None:
    """I3. API.md: "A second no-go signal while already rolled back escalates: R3 -> R2 -> R1";
    R1/R2/R3 narrow (runbook 32, Rollback Playbook); Everyday change: "Alert and annotation
    rollbacks narrow or do nothing: a requested playbook that narrows the current env is applied
    ... one that would not narrow is recorded (RollbackSkipped, with why) and changes nothing."
    """
    if not new_rollback(before.status, after.status):
        return
    if not (before.deployment.exists and after.deployment.exists):
        return
    old, new = scope_of(before.deployment.env), scope_of(after.deployment.env)
    rollback = after.status.last_rollback  # type: ignore[union-attr]
    reference = old
    restoring = before.status is not None and before.status.restart is not None and (
        observations.deployment.restart_token != before.status.restart.token)
    if restoring and applied_scope(before.status) is not None:
        # The Deployment lacks our token (recreated): the rung goes back on it in this tick
        # (design 7), and the rollback narrows that rung.
        reference = applied_scope(before.status)
    if not new.within(reference):
        raise AssertionError(
            f"I3: rollback {rollback.playbook.value} ({rollback.reason}) widened enforcement from "  # type: ignore[union-attr]
            f"{reference.describe()} to {new.describe()} ({_where(before.status)})"
        )
    if rollback.reason in EXTERNAL_REASONS and new == reference:  # type: ignore[union-attr]
        raise AssertionError(
            f"I3: requested {rollback.playbook.value} ({rollback.reason}) recorded as applied but "  # type: ignore[union-attr]
            f"it did not narrow {reference.describe()} (should be RollbackSkipped, nothing changed)"
        )


# --------------------------------------------------------------------------- I4


def no_climb_after_rollback_or_halt_until_spec_change(
    before: Snapshot, after: Snapshot, observations: Observations
) -> None:
    """I4. API.md: "After a rollback the rollout stays `RolledBack` and never climbs again on its
    own: a spec change (new generation) re-arms it. Halted means: stop climbing, change nothing
    more except a narrowing". "Toggling `suspend` is not a spec change for re-arming: a
    `RolledBack` rollout stays rolled back."
    """
    if not before.climb_blocked or after.status is None:
        return
    widened = operator_widened(before, after)
    if widened is not None and not restoring_recreated(before, observations, widened[1]):
        raise AssertionError(
            f"I4: {_where(before.status)} with no spec change since, yet enforcement widened from "
            f"{widened[0].describe()} to {widened[1].describe()}"
        )
    rungs = ladder(after.spec)
    if status_rung(rungs, after.status) > status_rung(rungs, before.status):
        raise AssertionError(f"I4: climbed from {_where(before.status)} to {_where(after.status)} with no spec change")
    if after.status.state not in (*STOPPED, State.SUSPENDED):
        raise AssertionError(
            f"I4: {_where(before.status)} became {_where(after.status)} with no spec change other than suspend"
        )


# --------------------------------------------------------------------------- I5


def circuit_breaker_trip(observations: Observations) -> list[str]:
    d = observations.deployment
    lines = [f"{p.pod}: {line}" for p in d.new_pods if p.log_readable for line in p.circuit_breaker_lines]
    if observations.metrics.available:
        lines += [f"{p.pod}: cb_trips_total={m.circuit_breaker_trips}" for p in d.new_pods
                  if (m := observations.metrics.pods.get(p.pod)) is not None and (m.circuit_breaker_trips or 0) > 0]
    return lines


def enforcement_is_always_guarded(before: Snapshot, after: Snapshot, observations: Observations) -> None:
    """I5. API.md, Everyday change: "Enforcement is always guarded: whenever the managed env has
    `ENFORCE=1`, the no-go gates run, in every state but `Suspended`. In `Halted` the only
    action allowed is a narrowing: a CB trip or an all-blocked symbol there applies R1."

    A CB trip on the new pods carrying the operator's token, started with ENFORCE=1 (and the
    Deployment still so), gets a narrowing or a halt on that very tick (in Halted: a narrowing).
    """
    if after.spec.suspend or before.status is None or before.status.restart is None:
        return
    d, real = observations.deployment, before.deployment
    if not d.exists or d.restart_token != before.status.restart.token or not real.rollout_complete:
        return
    if real.pods_env is None or real.pods_token != before.status.restart.token:
        return
    if real.env.get(ENFORCE) != "1" or dict(real.pods_env) != dict(real.env):
        return
    trip = circuit_breaker_trip(observations)
    if not trip:
        return
    old, new = scope_of(before.deployment.env), scope_of(after.deployment.env)
    narrowed = new != old and new.within(old)
    state = effective_state(before.status, after.spec)
    halted = after.status is not None and after.status.state is State.HALTED and state is not State.HALTED
    if narrowed or (halted and state is not State.HALTED):
        return
    raise AssertionError(
        f"I5: CB trip {trip} while {old.describe()} ({_where(before.status)}), but the tick left "
        f"{new.describe()} ({_where(after.status)}), actions {after.actions}"
    )


# --------------------------------------------------------------------------- I6


def lower_target_applied_on_next_tick(before: Snapshot, after: Snapshot, observations: Observations) -> None:
    """I6. API.md: "Down (a lower `targetPhase`, a GitOps revert): applied at once, no gates."
    Everyday change: "Down moves never wait: a lower `targetPhase` is applied within one tick in
    every state but `Suspended`, including `Preflight`, `Restarting` and `Verifying`; a preflight
    rerun never holds it back."
    """
    if not before.target_lowered or after.spec.suspend or not observations.deployment.exists:
        return
    if before.status is None or before.status.restart is None:
        return
    rungs = ladder(after.spec)
    target = rungs[target_rung(after.spec)]
    new = scope_of(after.deployment.env)
    if not new.within(target.scope):
        raise AssertionError(
            f"I6: targetPhase lowered to {after.spec.target_phase.value} ({target.scope.describe()}), "
            f"but after the tick the Deployment is {new.describe()} ({_where(before.status)} -> {_where(after.status)})"
        )


# --------------------------------------------------------------------------- I7


def every_transition_is_in_history_with_evidence(
    before: Snapshot, after: Snapshot, observations: Observations
) -> None:
    """I7. API.md, status: "`history` | newest last, bounded (last 100): {at, phase, step, action,
    reason, evidence}; evidence holds the metric values and log lines that decided"; "Every
    transition is also a Kubernetes Event on the FillProbRollout and a structured log line."
    """
    if after.status is None:
        return
    b, a = before.status or RolloutStatus(), after.status
    if len(a.history) > HISTORY_LIMIT:
        raise AssertionError(f"I7: history has {len(a.history)} entries (bounded to {HISTORY_LIMIT})")
    if (a.state, a.phase, a.step) == (b.state, b.phase, b.step):
        return
    added = new_history(b.history, a.history)
    if not added:
        raise AssertionError(f"I7: {_where(b)} -> {_where(a)} with no history entry")
    if not any(e.evidence for e in added):
        raise AssertionError(
            f"I7: {_where(b)} -> {_where(a)}: history entries without evidence "
            f"{[(e.action, e.reason) for e in added]}"
        )


# --------------------------------------------------------------------------- I8


def _body(decision: Any) -> dict[str, Any]:
    return decision.status.to_patch_body()


def decide_is_deterministic_and_idempotent(before: Snapshot, after: Snapshot, observations: Observations) -> None:
    """I8. decide.py: "Calling decide again with the same inputs after its actions took effect
    gives no action"; STYLE.md: "nothing important lives only in memory, so a killed operator
    resumes from `status`" (a status read back from JSON decides the same).
    """
    first = after.original
    if after.round_trip is not None:
        if _body(after.round_trip) != _body(first) or after.round_trip.actions != first.actions:
            raise AssertionError(
                "I8: the same inputs with the status through a JSON round trip decided differently: "
                f"{_where(first.status)} {first.actions} vs {_where(after.round_trip.status)} {after.round_trip.actions}"
            )
    if after.again is not None:
        repeated = [a for a in after.again.actions if isinstance(a, (PatchEnv, RunPreflight))]
        if repeated:
            raise AssertionError(
                f"I8: decide() again after its actions took effect asks for {repeated} "
                f"({_where(after.status)} -> {_where(after.again.status)})"
            )


# --------------------------------------------------------------------------- I9


def r2_enforces_only_listed_symbols(before: Snapshot, after: Snapshot, observations: Observations) -> None:
    """I9. API.md, Everyday change: "Last known-good follows the spec: R2 never enforces a symbol
    that the current spec no longer lists (canary or batches); with nothing left, R2 falls to
    `safeSymbols`, then R1."
    """
    if not new_rollback(before.status, after.status):
        return
    rollback = after.status.last_rollback  # type: ignore[union-attr]
    if rollback.playbook.value != "R2":  # type: ignore[union-attr]
        return
    listed = set(after.spec.canary_symbols) | {s for b in after.spec.expand_batches for s in b}
    enforced: set[str] = set()
    for action in after.actions:
        if isinstance(action, PatchEnv) and ENFORCE_SYMBOLS in action.set_env:
            enforced |= parse_symbols(action.set_env[ENFORCE_SYMBOLS])
    if after.deployment.exists and after.deployment.env.get(ENFORCE) == "1":
        enforced |= parse_symbols(after.deployment.env.get(ENFORCE_SYMBOLS))
    if not enforced or not enforced <= listed:
        raise AssertionError(
            f"I9: R2 enforces {sorted(enforced) or 'every symbol'}; the spec lists {sorted(listed)}"
        )


# --------------------------------------------------------------------------- I10

# What the pods logged or reported (the gate table's signals read on pods, not on the spec or env).
POD_GATE_REASONS = ("CircuitBreakerTripped", "AllOrdersBlocked", "BlocksOutsideAllowlist",
                    "ThresholdResolutionFailed", "UnexpectedThreshold", "RecommendedThresholdJumped")


def pods_judged_are_the_latest_restarts(before: Snapshot, after: Snapshot, observations: Observations) -> None:
    """I10. API.md, Gates: "Post-restart, on the **new pods only**", and the window's gates on
    them too. A rollback or halt for what pods logged or reported is decided on the pods of the
    operator's latest restart (the newest ReplicaSet, once it is that restart's), never on the
    previous step's pods that the restart is replacing: they carry the previous token, and what
    they say was answered already (a CB trip answered by R2 must not escalate R2 to R1 before
    R2's pods exist).
    """
    if before.status is None or after.status is None or before.status.restart is None:
        return
    judged = [h for h in new_history(before.status.history, after.status.history) if h.reason in POD_GATE_REASONS]
    if not judged or before.deployment.pods_token == before.status.restart.token:
        return
    raise AssertionError(
        f"I10: {judged[0].action} ({judged[0].reason}) decided on pods of restart {before.deployment.pods_token!r}, "
        f"not of the latest restart {before.status.restart.token!r} ({_where(before.status)}); "
        f"new pods observed: {[p.pod for p in observations.deployment.new_pods]}"
    )


ALL = (
    enforcement_widens_only_right_after_the_step_below_passed,
    missing_data_never_widens_nor_rolls_back,
    rollbacks_only_narrow,
    no_climb_after_rollback_or_halt_until_spec_change,
    enforcement_is_always_guarded,
    lower_target_applied_on_next_tick,
    every_transition_is_in_history_with_evidence,
    decide_is_deterministic_and_idempotent,
    r2_enforces_only_listed_symbols,
    pods_judged_are_the_latest_restarts,
)


def check_all(before: Snapshot, after: Snapshot, observations: Observations) -> None:
    for invariant in ALL:
        invariant(before, after, observations)
