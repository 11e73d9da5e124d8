"""Rollback and escalation (runbook 32 "Rollback Playbook", API.md "Gates").

A no-go gets the gate table's answer for the applied phase (playbooks.response_to); while
already rolled back it escalates R3 -> R2 -> R1 (after R1: Halt). A rollback restarts too: its
pods get the post-restart checks, then the rung is guarded. A rollback only narrows; R2 never
enforces a symbol the current spec does not list (last known-good follows the spec).
"""

from __future__ import annotations

from typing import Any

from ..api import AppliedEnv, LastRollback, Playbook, State
from .findings import Finding, Outcome, merge_evidence
from .ladder import enforced_allowlist, phase_of_env
from .playbooks import HALT, Response, combine, playbook_patch, r2_symbols, response_to, while_rolled_back
from .reasons import Progress
from .scope import narrower
from .tick import Tick, jsonable

R1, R2, R3 = Playbook.R1, Playbook.R2, Playbook.R3


def no_go(t: Tick, findings: list[Finding]) -> None:
    """API.md's gate table for the applied phase; escalated while already rolled back."""
    s = t.s
    answers = [response_to(f.signal, s.phase) for f in findings]
    response = combine(answers)
    if s.state is State.ROLLED_BACK and s.last_rollback is not None:
        response = while_rolled_back(response, s.last_rollback.playbook)
    if response is None:
        return
    decisive = next((f for f, a in zip(findings, answers) if a == response), findings[0])
    answer(t, findings, response, decisive)


def answer(t: Tick, findings: list[Finding], response: Response, decisive: Finding | None = None) -> None:
    decisive = decisive or findings[0]
    evidence = merge_evidence(f.evidence for f in findings)
    # Each signal once, however many sources saw it (a CB trip is a log line and a counter).
    evidence["signals"] = list(dict.fromkeys(f.reason.value for f in findings))
    message = "; ".join(dict.fromkeys(f.message for f in findings))
    if response == HALT:
        t.halt(decisive.reason, message, evidence)
    else:
        roll_back(t, response, decisive.reason.value, message, evidence)  # type: ignore[arg-type]


def allowlist_below(t: Tick) -> tuple[str, ...]:
    """The allowlist of the highest rung below the applied one that has one (Expand k -> k-1)."""
    here = t.at_or_below() if t.s.phase.rank > 0 else 0
    for step in reversed(t.ladder[:here]):
        if step.allowlist:
            return step.allowlist
    return ()


def last_known_good(t: Tick) -> tuple[str, ...]:
    """lastKnownGoodSymbols as far as the current spec still lists them (API.md, Everyday change)."""
    listed = t.spec_symbols()
    return tuple(x for x in t.s.last_known_good_symbols if x in listed)


def resolve(t: Tick, playbook: Playbook) -> tuple[Playbook, tuple[str, ...]]:
    """The playbook actually applied and R2's allowlist (R2 with nothing narrower: R1)."""
    if playbook is not R2:
        return playbook, ()
    in_trouble = enforced_allowlist(t.applied)
    listed = t.spec_symbols()
    candidates = tuple(x for x in last_known_good(t))
    below = tuple(x for x in allowlist_below(t) if x in listed)
    symbols = r2_symbols(candidates, in_trouble, below, tuple(t.spec.safe_symbols))
    return (R2, symbols) if symbols else (R1, ())


def env_after(t: Tick, playbook: Playbook) -> AppliedEnv:
    applied, symbols = resolve(t, playbook)
    return playbook_patch(applied, symbols).apply_to(t.applied)


def would_narrow(t: Tick, playbook: Playbook) -> bool:
    return narrower(env_after(t, playbook), t.applied)


def roll_back(t: Tick, playbook: Playbook, reason: str, message: str, evidence: dict[str, Any]) -> None:
    """Apply R1/R2/R3 (runbook 32, Rollback Playbook) and restart; then keep guarding."""
    s = t.s
    requested = playbook
    in_trouble = enforced_allowlist(t.applied)
    if in_trouble and set(in_trouble) == set(s.last_known_good_symbols):
        s.last_known_good_symbols = list(allowlist_below(t))  # it passed, but it is what failed now
    playbook, symbols = resolve(t, playbook)
    patch, token = t.issue_restart(playbook_patch(playbook, symbols))
    phase, batch, label = phase_of_env(t.applied, t.ladder, tuple(t.spec.safe_symbols))
    s.phase, s.batch, s.step = phase, batch, f"{label} ({playbook.value})"
    s.enforced_symbols = t.enforced_now()
    s.state = State.ROLLED_BACK
    s.observation_started_at = s.observation_ends_at = None
    s.paused_seconds = 0
    evidence = {**evidence, "playbook": playbook.value, "setEnv": dict(patch.set_env), "restartToken": token}
    if requested is not playbook:
        evidence["requested"] = requested.value
        message += f" (R2 had no narrower known-good set the spec still lists: {playbook.value})"
    s.last_rollback = LastRollback(playbook=playbook, reason=reason, at=t.now, evidence=jsonable(evidence))
    t.transition(f"Rollback{playbook.value}", reason, f"{playbook.value} applied: {message}", evidence, warning=True)


def rolled_back(t: Tick) -> None:
    """A rollback restarts too: verify its pods, then keep guarding (never climb)."""
    from . import guarding, walking

    s = t.s
    if s.restart is not None and not s.restart.verified:
        result = walking.verify(t)
        if result is None:
            return
        if result.outcome is Outcome.NO_GO:
            no_go(t, list(result.findings))
            return
        walking.verified(t)
        playbook = s.last_rollback.playbook.value if s.last_rollback else "the rollback"
        t.transition("RollbackVerified", Progress.POST_RESTART_CHECKS_PASSED,
                     f"post-restart checks passed after {playbook}; guarding", guarding.gauges(t), sets_reason=False)
        return
    guarding.watch(t)
