"""The ladder and API.md's env table."""

from __future__ import annotations

import pytest
from domain_builders import make_spec

from fillprob_operator.api import AppliedEnv, Phase
from fillprob_operator.domain.ladder import (
    AUTO_THRESHOLD,
    ENFORCE,
    ENFORCE_SYMBOLS,
    MIN_BPS,
    EnvPatch,
    applied_env_from,
    build_ladder,
    index_at_or_below,
    index_of,
    parse_symbols,
    phase_of_env,
    target_index,
)

LADDER = build_ladder(make_spec())


def test_ladder_order_and_labels() -> None:
    assert [s.label for s in LADDER] == ["Shadow", "Canary", "Expand 1/2", "Expand 2/2", "Full", "AutoThreshold"]
    assert [s.allowlist for s in LADDER] == [
        (), ("SYM1", "SYM2"), ("SYM1", "SYM2", "SYM3", "SYM4"), ("SYM1", "SYM2", "SYM3", "SYM4", "SYM5", "SYM6"), (), ()]
    assert [s.batch for s in LADDER] == [None, None, 1, 2, None, None]


def test_shadow_only_ladder() -> None:
    ladder = build_ladder(make_spec(targetPhase="Shadow", canarySymbols=None, expandBatches=None, safeSymbols=None))
    assert [s.label for s in ladder] == ["Shadow"]


# API.md's env table, one row per step.
ENV_TABLE = [
    ("Shadow", {ENFORCE: "0", AUTO_THRESHOLD: "0"}, (ENFORCE_SYMBOLS,)),
    ("Canary", {ENFORCE: "1", ENFORCE_SYMBOLS: "SYM1,SYM2", AUTO_THRESHOLD: "0"}, ()),
    ("Expand 1/2", {ENFORCE: "1", ENFORCE_SYMBOLS: "SYM1,SYM2,SYM3,SYM4", AUTO_THRESHOLD: "0"}, ()),
    ("Expand 2/2", {ENFORCE: "1", ENFORCE_SYMBOLS: "SYM1,SYM2,SYM3,SYM4,SYM5,SYM6", AUTO_THRESHOLD: "0"}, ()),
    ("Full", {ENFORCE: "1", ENFORCE_SYMBOLS: "", AUTO_THRESHOLD: "0"}, ()),
    ("AutoThreshold", {ENFORCE: "1", ENFORCE_SYMBOLS: "", AUTO_THRESHOLD: "1"}, ()),
]


@pytest.mark.parametrize("label, set_env, remove_env", ENV_TABLE)
def test_env_table(label: str, set_env: dict, remove_env: tuple) -> None:
    step = next(s for s in LADDER if s.label == label)
    assert step.env() == EnvPatch(set_env, remove_env)


@pytest.mark.parametrize("label, set_env, remove_env", ENV_TABLE)
def test_min_bps_rides_along_with_every_step(label: str, set_env: dict, remove_env: tuple) -> None:
    step = next(s for s in LADDER if s.label == label)
    assert step.env(2600) == EnvPatch({**set_env, MIN_BPS: "2600"}, remove_env)


def test_env_patch_then_later_wins() -> None:
    first = EnvPatch({ENFORCE: "1", ENFORCE_SYMBOLS: "A"}, (AUTO_THRESHOLD,))
    later = EnvPatch({ENFORCE: "0", AUTO_THRESHOLD: "0"}, (ENFORCE_SYMBOLS,))
    assert first.then(later) == EnvPatch({ENFORCE: "0", AUTO_THRESHOLD: "0"}, (ENFORCE_SYMBOLS,))


def test_env_patch_applies_to_applied_env() -> None:
    env = AppliedEnv(enforce="1", enforce_symbols="A,B", auto_threshold="1", min_bps="2500")
    after = EnvPatch({ENFORCE: "0"}, (ENFORCE_SYMBOLS,)).apply_to(env)
    assert after == AppliedEnv(enforce="0", enforce_symbols=None, auto_threshold="1", min_bps="2500")


def test_applied_env_from_container_env() -> None:
    env = applied_env_from({ENFORCE: "0", MIN_BPS: "2500", "OTHER": "x"})
    assert env == AppliedEnv(enforce="0", min_bps="2500")


@pytest.mark.parametrize("text, symbols", [(None, ()), ("", ()), ("A", ("A",)), ("A, B,", ("A", "B"))])
def test_parse_symbols(text, symbols) -> None:
    assert parse_symbols(text) == symbols


@pytest.mark.parametrize(
    "target, index",
    [(Phase.SHADOW, 0), (Phase.CANARY, 1), (Phase.EXPAND, 3), (Phase.FULL, 4), (Phase.AUTO_THRESHOLD, 5)],
)
def test_target_index(target: Phase, index: int) -> None:
    assert target_index(LADDER, target) == index


def test_index_lookups() -> None:
    assert index_of(LADDER, Phase.EXPAND, 2) == 3
    assert index_of(LADDER, Phase.EXPAND, 3) is None
    assert index_at_or_below(LADDER, Phase.EXPAND, 3) == 3  # a batch that was removed: the last one left
    assert index_at_or_below(LADDER, Phase.PREFLIGHT, None) == -1


@pytest.mark.parametrize(
    "env, expected",
    [
        (AppliedEnv(enforce="0", enforce_symbols="SYM1,SYM2"), (Phase.SHADOW, None, "Shadow")),  # after R1
        (AppliedEnv(enforce="1", enforce_symbols="SYM1,SYM2"), (Phase.CANARY, None, "Canary")),
        (AppliedEnv(enforce="1", enforce_symbols="SYM2,SYM1,SYM4,SYM3"), (Phase.EXPAND, 1, "Expand 1/2")),
        (AppliedEnv(enforce="1", enforce_symbols="SYM1"), (Phase.CANARY, None, "Canary (safeSymbols)")),
        (AppliedEnv(enforce="1", enforce_symbols="SYM2"), (Phase.CANARY, None, "Canary (1 symbols)")),
        # no rung has this set: the highest rung it covers (a person dropped SYM6 at Expand 2)
        (AppliedEnv(enforce="1", enforce_symbols="SYM1,SYM2,SYM3,SYM4,SYM5"), (Phase.EXPAND, 1, "Expand 1/2 (+SYM5)")),
        (AppliedEnv(enforce="1", enforce_symbols="", auto_threshold="0"), (Phase.FULL, None, "Full")),  # after R3
        (AppliedEnv(enforce="1", enforce_symbols="", auto_threshold="1"), (Phase.AUTO_THRESHOLD, None, "AutoThreshold")),
    ],
)
def test_phase_of_env(env: AppliedEnv, expected: tuple) -> None:
    assert phase_of_env(env, LADDER, ("SYM1",)) == expected
