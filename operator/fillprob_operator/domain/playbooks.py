"""What to do about a no-go: API.md's gate table, the rollback playbooks, escalation.

`response_to(signal, phase)` is the table (`HALT` or a `Playbook`); `combine` picks one answer
for simultaneous findings (a playbook beats Halt: stop the bleeding first; R1 > R2 > R3);
`escalate` is "a second no-go while already rolled back: R3 -> R2 -> R1" (after R1: Halt).
`playbook_patch` is the env of R1/R2/R3 (runbook 32, Rollback Playbook).
"""

from __future__ import annotations

from typing import Iterable, Literal, Union

from ..api import Phase, Playbook
from .gates import Signal
from .ladder import AUTO_THRESHOLD, ENFORCE, ENFORCE_SYMBOLS, EnvPatch

HALT: Literal["Halt"] = "Halt"
Response = Union[Playbook, Literal["Halt"]]

_S, _C, _E, _F, _A = Phase.SHADOW, Phase.CANARY, Phase.EXPAND, Phase.FULL, Phase.AUTO_THRESHOLD
R1, R2, R3 = Playbook.R1, Playbook.R2, Playbook.R3

# API.md "Gates": signal x step -> response. None = n/a (cannot happen without an allowlist).
NO_GO_TABLE: dict[Signal, dict[Phase, Response | None]] = {
    Signal.CIRCUIT_BREAKER_TRIP: {_S: HALT, _C: R1, _E: R2, _F: R2, _A: R3},
    Signal.ALL_ORDERS_BLOCKED: {_S: HALT, _C: R2, _E: R2, _F: R2, _A: R3},
    Signal.BLOCKS_OUTSIDE_ALLOWLIST: {_S: HALT, _C: R1, _E: R1, _F: None, _A: None},
    Signal.RESOLUTION_FAILED: {_S: HALT, _C: R1, _E: R1, _F: R1, _A: R3},
    Signal.UNEXPECTED_THRESHOLD: {_S: HALT, _C: HALT, _E: HALT, _F: HALT, _A: R3},
    Signal.RESTART_TIMED_OUT: {_S: HALT, _C: R1, _E: R1, _F: R1, _A: R3},
}

_SEVERITY = {R3: 1, R2: 2, R1: 3}


def response_to(signal: Signal, phase: Phase) -> Response | None:
    """The table's answer; before any step (phase Preflight) nothing is enforced: Halt."""
    if phase is Phase.PREFLIGHT:
        return HALT
    return NO_GO_TABLE[signal][phase]


def combine(responses: Iterable[Response | None]) -> Response | None:
    """One answer for simultaneous findings: the most severe playbook, else Halt, else None."""
    present = [r for r in responses if r is not None]
    playbooks = [r for r in present if r != HALT]
    if playbooks:
        return max(playbooks, key=lambda p: _SEVERITY[p])  # type: ignore[index]
    return HALT if present else None


def escalate(previous: Playbook) -> Response:
    """A second no-go while rolled back: R3 -> R2 -> R1; after R1 nothing is left: Halt."""
    return {R3: R2, R2: R1, R1: HALT}[previous]


def while_rolled_back(table: Response | None, previous: Playbook) -> Response | None:
    """The table's answer for the effective phase, escalated past the playbook already applied."""
    if table is None:
        return None
    escalated = escalate(previous)
    if escalated == HALT or table == HALT:
        return HALT
    return max((table, escalated), key=lambda p: _SEVERITY[p])  # type: ignore[index]


def r2_symbols(
    last_known_good: tuple[str, ...],
    current_allowlist: tuple[str, ...],
    step_below_allowlist: tuple[str, ...],
    safe_symbols: tuple[str, ...],
) -> tuple[str, ...]:
    """R2's allowlist: the last known-good set, else the allowlist of the rung below the one
    in trouble (Expand k -> k-1), else safeSymbols; () means "neither: fall to R1".

    R2 narrows (runbook: "Step Down -- Narrow Allowlist"): with an allowlist applied, only a
    strict subset of it qualifies; with none (Full, AutoThreshold, enforcement off) any does.
    """
    now = set(current_allowlist)
    for candidate in (last_known_good, step_below_allowlist, safe_symbols):
        if candidate and (not now or set(candidate) < now):
            return tuple(candidate)
    return ()


def playbook_patch(playbook: Playbook, r2_allowlist: tuple[str, ...] = ()) -> EnvPatch:
    """Runbook 32 R1/R2/R3: only these keys change. R2 needs a non-empty allowlist."""
    if playbook is R1:
        return EnvPatch({ENFORCE: "0"})
    if playbook is R2:
        if not r2_allowlist:
            raise ValueError("R2 needs an allowlist (last known-good or safeSymbols); use R1")
        return EnvPatch({ENFORCE: "1", ENFORCE_SYMBOLS: ",".join(r2_allowlist)})
    return EnvPatch({AUTO_THRESHOLD: "0"})
