"""API.md's gate table, the playbooks' env, escalation, R2's target."""

from __future__ import annotations

import pytest

from fillprob_operator.api import Phase, Playbook
from fillprob_operator.domain.gates import Signal
from fillprob_operator.domain.ladder import AUTO_THRESHOLD, ENFORCE, ENFORCE_SYMBOLS, EnvPatch
from fillprob_operator.domain.playbooks import (
    HALT,
    combine,
    escalate,
    playbook_patch,
    r2_symbols,
    response_to,
    while_rolled_back,
)

R1, R2, R3 = Playbook.R1, Playbook.R2, Playbook.R3
PHASES = [Phase.SHADOW, Phase.CANARY, Phase.EXPAND, Phase.FULL, Phase.AUTO_THRESHOLD]

# Copied row by row from API.md "Gates" (None = n/a).
API_TABLE = {
    Signal.CIRCUIT_BREAKER_TRIP: [HALT, R1, R2, R2, R3],
    Signal.ALL_ORDERS_BLOCKED: [HALT, R2, R2, R2, R3],
    Signal.BLOCKS_OUTSIDE_ALLOWLIST: [HALT, R1, R1, None, None],
    Signal.RESOLUTION_FAILED: [HALT, R1, R1, R1, R3],
    Signal.UNEXPECTED_THRESHOLD: [HALT, HALT, HALT, HALT, R3],
    Signal.RESTART_TIMED_OUT: [HALT, R1, R1, R1, R3],
}
CELLS = [(signal, phase, row[i]) for signal, row in API_TABLE.items() for i, phase in enumerate(PHASES)]


@pytest.mark.parametrize("signal, phase, expected", CELLS)
def test_gate_table(signal: Signal, phase: Phase, expected) -> None:
    assert response_to(signal, phase) == expected


def test_nothing_applied_yet_halts() -> None:
    assert response_to(Signal.CIRCUIT_BREAKER_TRIP, Phase.PREFLIGHT) == HALT


@pytest.mark.parametrize(
    "responses, expected",
    [([R2, R1], R1), ([R3, R2], R2), ([HALT, R2], R2), ([HALT, HALT], HALT), ([None, R3], R3), ([None], None), ([], None)],
)
def test_combine_stops_the_bleeding_first(responses, expected) -> None:
    assert combine(responses) == expected


@pytest.mark.parametrize("previous, expected", [(R3, R2), (R2, R1), (R1, HALT)])
def test_escalation(previous, expected) -> None:
    assert escalate(previous) == expected


@pytest.mark.parametrize(
    "table, previous, expected",
    [
        (R2, R3, R2),  # CB in Full after R3: table R2, escalation R2
        (R2, R2, R1),  # CB again after R2: escalate to R1
        (R1, R3, R1),  # the table is more severe than the escalation
        (HALT, R3, HALT),  # the table says Halt for the effective phase
        (R3, R1, HALT),  # nothing left after R1
        (None, R2, None),
    ],
)
def test_while_rolled_back(table, previous, expected) -> None:
    assert while_rolled_back(table, previous) == expected


# API.md's env table, rows R1..R3.
def test_playbook_env() -> None:
    assert playbook_patch(R1) == EnvPatch({ENFORCE: "0"})
    assert playbook_patch(R2, ("SYM1", "SYM2")) == EnvPatch({ENFORCE: "1", ENFORCE_SYMBOLS: "SYM1,SYM2"})
    assert playbook_patch(R3) == EnvPatch({AUTO_THRESHOLD: "0"})
    with pytest.raises(ValueError):
        playbook_patch(R2, ())


CANARY = ("SYM1", "SYM2")
E1 = CANARY + ("SYM3", "SYM4")
E2 = E1 + ("SYM5", "SYM6")


@pytest.mark.parametrize(
    "lkg, current, below, safe, expected",
    [
        (E1, E2, E1, ("SYM1",), E1),  # Expand 2 in trouble -> batch 1's set
        (E2, E2, E1, ("SYM1",), E1),  # Expand 2 had passed but fails now -> the rung below
        (E2, (), E2, ("SYM1",), E2),  # Full -> the widest allowlist that passed
        ((), CANARY, (), ("SYM1",), ("SYM1",)),  # Canary, nothing passed -> safeSymbols
        ((), CANARY, (), (), ()),  # neither -> R1
        ((), CANARY, (), CANARY, ()),  # safeSymbols == canary does not narrow -> R1
        (E1, CANARY, (), ("SYM1",), ("SYM1",)),  # a wider stale set never widens
        (E1, (), E1, (), E1),  # enforcement off (after R1): any known-good set
    ],
)
def test_r2_target(lkg, current, below, safe, expected) -> None:
    assert r2_symbols(lkg, current, below, safe) == expected
