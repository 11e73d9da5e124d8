"""Gates: post-restart checks and window signals on the new pods, missing data explicit."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fillprob_operator.api import AppliedEnv, Gates
from fillprob_operator.domain.gates import (
    Baseline,
    Expectation,
    Outcome,
    Signal,
    during_window,
    key_values,
    parse_resolution,
    post_restart,
)
from fillprob_operator.domain.observations import MetricsObservation, PodMetrics, PodStartup
from fillprob_operator.domain.reasons import Reason

OK_RECOMMEND = "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only recommended_bps=3000 configured_bps=2500 effective_bps=2500"
OK_AUTO = "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=auto_apply recommended_bps=3000 configured_bps=2500 effective_bps=3000"
FAILED = "FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=eval_report_missing detail=no file"
SKIPPED = "THRESHOLD_RESOLVE_SKIPPED reason=model_dir_unset"

SHADOW = Expectation(enforce=False, allowlist=(), auto_threshold=False)
CANARY = Expectation(enforce=True, allowlist=("SYM1", "SYM2"), auto_threshold=False)
FULL = Expectation(enforce=True, allowlist=(), auto_threshold=False)
AUTO = Expectation(enforce=True, allowlist=(), auto_threshold=True)
GATES = Gates()
BASE = Baseline(recommended_bps=3000)


def pod(name: str = "p1", line: str | None = OK_RECOMMEND, ready: bool = True, cb: tuple = ()) -> PodStartup:
    return PodStartup(name, ready, line, cb)


def sample(name: str = "p1", expect: Expectation = CANARY, **overrides) -> PodMetrics:
    values = dict(
        pod=name,
        enforce_enabled=1.0 if expect.enforce else 0.0,
        allowlist_enabled=1.0 if expect.allowlist else 0.0,
        auto_threshold_bps=3000.0,
        circuit_breaker_trips=0.0,
        blocks_by_symbol={s: 5.0 for s in expect.allowlist} if expect.enforce else {},
        recent_blocks_by_symbol={"SYM1": 30.0},
        recent_orders_by_symbol={"SYM1": 100.0, "SYM7": 100.0},
    )
    values.update(overrides)
    return PodMetrics(**values)


def metrics(*samples: PodMetrics) -> MetricsObservation:
    return MetricsObservation(available=True, pods={s.pod: s for s in samples})


def test_expectation_from_applied_env() -> None:
    assert Expectation.from_env(AppliedEnv(enforce="1", enforce_symbols="SYM1,SYM2", auto_threshold="0")) == CANARY
    assert Expectation.from_env(AppliedEnv(enforce="0", enforce_symbols="SYM1")) == SHADOW
    assert Expectation.from_env(AppliedEnv(enforce="1", enforce_symbols="", auto_threshold="1")).mode == "auto_apply"


def test_parse_resolution_lines() -> None:
    ok = parse_resolution("2026-03-02T09:00:00Z INFO " + OK_AUTO)
    assert (ok.kind, ok.mode, ok.recommended_bps, ok.configured_bps, ok.effective_bps) == ("ok", "auto_apply", 3000, 2500, 3000)
    assert parse_resolution(FAILED).kind == "failed"
    assert parse_resolution(SKIPPED).kind == "skipped"
    assert parse_resolution("hello").kind == "unknown"


def test_key_values_from_preflight_output() -> None:
    out = "PASS model_dir\nconfigured_bps=2500\nrecommended_bps=3100\neffective_bps=3100\nmode=auto_apply\nPREFLIGHT_PASS"
    assert key_values(out) == {"configured_bps": "2500", "recommended_bps": "3100", "effective_bps": "3100", "mode": "auto_apply"}


# --------------------------------------------------------------------------- post-restart


def test_post_restart_passes() -> None:
    assert post_restart((pod(),), metrics(sample()), CANARY, BASE).outcome is Outcome.PASS


@pytest.mark.parametrize(
    "pods",
    [(), (pod(ready=False),), (pod(line=None),), (pod("p1"), pod("p2", ready=False))],
)
def test_post_restart_waits_for_ready_pods_that_logged(pods) -> None:
    assert post_restart(pods, metrics(*(sample(p.pod) for p in pods)), CANARY, BASE).outcome is Outcome.WAIT


def test_post_restart_no_data_when_prometheus_down_or_series_absent() -> None:
    assert post_restart((pod(),), MetricsObservation(False, "PrometheusUnreachable"), CANARY, BASE).outcome is Outcome.NO_DATA
    assert post_restart((pod(),), metrics(), CANARY, BASE).outcome is Outcome.NO_DATA
    result = post_restart((pod(),), metrics(sample(circuit_breaker_trips=None)), CANARY, BASE)
    assert result.outcome is Outcome.NO_DATA and "cb_trips_total absent" in result.message
    result = post_restart((pod(),), metrics(sample(allowlist_enabled=None)), CANARY, BASE)
    assert result.outcome is Outcome.NO_DATA


def test_allowlist_gauge_not_needed_in_shadow() -> None:
    s = sample(expect=SHADOW, allowlist_enabled=None)
    assert post_restart((pod(),), metrics(s), SHADOW, BASE).outcome is Outcome.PASS


@pytest.mark.parametrize(
    "pods, sample_overrides, expect, signal, reason",
    [
        ((pod(line=FAILED),), {}, CANARY, Signal.RESOLUTION_FAILED, Reason.THRESHOLD_RESOLUTION_FAILED),
        ((pod(line=SKIPPED),), {}, CANARY, Signal.RESOLUTION_FAILED, Reason.MODEL_DIR_UNSET),
        ((pod(line=OK_AUTO),), {}, CANARY, Signal.RESOLUTION_FAILED, Reason.THRESHOLD_RESOLUTION_FAILED),  # wrong mode
        ((pod(),), {"enforce_enabled": 0.0}, CANARY, Signal.RESOLUTION_FAILED, Reason.THRESHOLD_RESOLUTION_FAILED),
        ((pod(),), {"allowlist_enabled": 1.0}, FULL, Signal.RESOLUTION_FAILED, Reason.THRESHOLD_RESOLUTION_FAILED),
        ((pod(),), {"auto_threshold_bps": 0.0}, CANARY, Signal.RESOLUTION_FAILED, Reason.THRESHOLD_RESOLUTION_FAILED),
        ((pod(),), {"circuit_breaker_trips": 1.0}, CANARY, Signal.CIRCUIT_BREAKER_TRIP, Reason.CIRCUIT_BREAKER_TRIPPED),
        ((pod(cb=("FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=50 rate_pct=100",)),), {}, CANARY,
         Signal.CIRCUIT_BREAKER_TRIP, Reason.CIRCUIT_BREAKER_TRIPPED),
        ((pod(line=OK_RECOMMEND.replace("3000", "3400")),), {"auto_threshold_bps": 3400.0}, CANARY,
         Signal.UNEXPECTED_THRESHOLD, Reason.RECOMMENDED_THRESHOLD_JUMPED),
        ((pod(line=OK_AUTO),), {"auto_threshold_bps": 2900.0}, AUTO, Signal.UNEXPECTED_THRESHOLD, Reason.UNEXPECTED_THRESHOLD),
    ],
)
def test_post_restart_no_go(pods, sample_overrides, expect, signal, reason) -> None:
    result = post_restart(pods, metrics(sample(expect=expect, **sample_overrides)), expect, BASE)
    assert result.outcome is Outcome.NO_GO
    assert (signal, reason) in {(f.signal, f.reason) for f in result.findings}


def test_auto_threshold_gauge_equals_logged_effective_bps() -> None:
    assert post_restart((pod(line=OK_AUTO),), metrics(sample(expect=AUTO)), AUTO, BASE).outcome is Outcome.PASS


def test_effective_threshold_outside_range_in_auto_threshold() -> None:
    base = Baseline(3000, (1000, 2000))
    result = post_restart((pod(line=OK_AUTO),), metrics(sample(expect=AUTO)), AUTO, base)
    assert {f.reason for f in result.findings} == {Reason.UNEXPECTED_THRESHOLD}
    assert result.evidence["thresholdRange"] == [1000, 2000]


def test_threshold_range_is_only_for_auto_threshold() -> None:
    base = Baseline(3000, (1000, 2000))
    assert post_restart((pod(),), metrics(sample()), CANARY, base).outcome is Outcome.PASS


def test_failed_resolution_is_a_no_go_even_while_other_pods_are_not_ready() -> None:
    result = post_restart((pod("p1", line=FAILED), pod("p2", ready=False)), metrics(), CANARY, BASE)
    assert result.outcome is Outcome.NO_GO


def test_no_go_evidence_holds_values_and_log_lines() -> None:
    result = post_restart((pod(line=FAILED),), metrics(sample(circuit_breaker_trips=2.0)), CANARY, BASE)
    assert result.evidence["cbTrips"] == {"p1": 2.0}
    assert result.evidence["logLines"] == [f"p1: {FAILED}"]


def test_unknown_baseline_two_pods_disagreeing_is_a_jump() -> None:
    pods = (pod("p1"), pod("p2", line=OK_RECOMMEND.replace("3000", "3100")))
    result = post_restart(pods, metrics(sample("p1"), sample("p2", auto_threshold_bps=3100.0)), CANARY, Baseline())
    assert {f.reason for f in result.findings} == {Reason.RECOMMENDED_THRESHOLD_JUMPED}


# --------------------------------------------------------------------------- during the window


def test_window_passes() -> None:
    assert during_window((pod(),), metrics(sample()), CANARY, BASE, GATES).outcome is Outcome.PASS


def test_window_without_pods_is_no_data() -> None:
    assert during_window((), metrics(), CANARY, BASE, GATES).outcome is Outcome.NO_DATA


@pytest.mark.parametrize(
    "expect, overrides, reason",
    [
        (SHADOW, {"blocks_by_symbol": {"SYM1": 1.0}}, Reason.BLOCKS_OUTSIDE_ALLOWLIST),  # Shadow: zero blocks
        (CANARY, {"blocks_by_symbol": {"SYM1": 9.0, "SYM7": 1.0}}, Reason.BLOCKS_OUTSIDE_ALLOWLIST),
        (CANARY, {"circuit_breaker_trips": 1.0}, Reason.CIRCUIT_BREAKER_TRIPPED),
        (CANARY, {"recent_blocks_by_symbol": {"SYM1": 99.0}}, Reason.ALL_ORDERS_BLOCKED),
        (FULL, {"recent_blocks_by_symbol": {"SYM7": 100.0}}, Reason.ALL_ORDERS_BLOCKED),
        (CANARY, {"auto_threshold_bps": 3500.0}, Reason.RECOMMENDED_THRESHOLD_JUMPED),
    ],
)
def test_window_signals(expect, overrides, reason) -> None:
    result = during_window((pod(),), metrics(sample(expect=expect, **overrides)), expect, BASE, GATES)
    assert result.outcome is Outcome.NO_GO
    assert reason in {f.reason for f in result.findings}


def test_blocks_outside_allowlist_is_not_applicable_in_full() -> None:
    s = sample(expect=FULL, blocks_by_symbol={"SYM7": 10.0})
    assert during_window((pod(),), metrics(s), FULL, BASE, GATES).outcome is Outcome.PASS


def test_block_ratio_needs_min_orders_and_counts_across_pods() -> None:
    few = sample(recent_blocks_by_symbol={"SYM1": 10.0}, recent_orders_by_symbol={"SYM1": 10.0})
    assert during_window((pod(),), metrics(few), CANARY, BASE, GATES).outcome is Outcome.PASS
    p1 = sample("p1", recent_blocks_by_symbol={"SYM1": 12.0}, recent_orders_by_symbol={"SYM1": 12.0})
    p2 = sample("p2", recent_blocks_by_symbol={"SYM1": 12.0}, recent_orders_by_symbol={"SYM1": 12.0})
    result = during_window((pod("p1"), pod("p2")), metrics(p1, p2), CANARY, BASE, GATES)
    assert result.outcome is Outcome.NO_GO
    assert result.evidence["blockedSymbols"]["SYM1"]["orders"] == 24.0


def test_block_ratio_below_max_block_ratio_is_reasonable() -> None:
    s = sample(recent_blocks_by_symbol={"SYM1": 98.0}, recent_orders_by_symbol={"SYM1": 100.0})
    assert during_window((pod(),), metrics(s), CANARY, BASE, GATES).outcome is Outcome.PASS
    strict = Gates(max_block_ratio=0.9)
    assert during_window((pod(),), metrics(s), CANARY, BASE, strict).outcome is Outcome.NO_GO


def test_symbol_outside_allowlist_never_counts_as_all_blocked() -> None:
    s = sample(recent_blocks_by_symbol={"SYM7": 100.0}, recent_orders_by_symbol={"SYM7": 100.0})
    result = during_window((pod(),), metrics(s), CANARY, BASE, GATES)
    assert Reason.ALL_ORDERS_BLOCKED not in {f.reason for f in result.findings}


def test_missing_data_alone_is_never_a_no_go() -> None:
    result = during_window((pod(),), MetricsObservation(False, "PrometheusUnreachable"), CANARY, BASE, GATES)
    assert result.outcome is Outcome.NO_DATA and "PrometheusUnreachable" in result.message
    partial = sample(enforce_enabled=None, auto_threshold_bps=None)
    assert during_window((pod(),), metrics(partial), CANARY, BASE, GATES).outcome is Outcome.NO_DATA


def test_log_signals_count_even_without_metrics() -> None:
    cb = pod(cb=("FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=50 rate_pct=98",))
    result = during_window((cb,), MetricsObservation(False, "PrometheusUnreachable"), CANARY, BASE, GATES)
    assert result.outcome is Outcome.NO_GO
    assert result.evidence["logLines"] == ["p1: FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=50 rate_pct=98"]


def test_unknown_baseline_skips_the_jump_check() -> None:
    s = sample(auto_threshold_bps=4100.0)
    assert during_window((pod(),), metrics(s), CANARY, Baseline(), GATES).outcome is Outcome.PASS


def test_auto_threshold_gauge_drift_is_unexpected() -> None:
    s = replace(sample(expect=AUTO), auto_threshold_bps=3300.0)
    result = during_window((pod(line=OK_AUTO),), metrics(s), AUTO, BASE, GATES)
    assert {f.reason for f in result.findings} == {Reason.UNEXPECTED_THRESHOLD}


@given(st.lists(st.sampled_from(["FILL_PROB_THRESHOLD_RESOLUTION_OK", "FILL_PROB_THRESHOLD_RESOLUTION_FAILED",
                                 "mode=auto_apply", "mode=", "configured_bps=2500", "recommended_bps=x",
                                 "effective_bps=-3", " ", "=", "bps=1"]), max_size=8).map(" ".join))
def test_a_resolution_line_is_parsed_once_and_read_as_the_parse_reads_it(line):
    """Every tick reads its pods' same line: remembered, it must be what a fresh parse says,
    and frozen (one tick cannot change what the next reads)."""
    from dataclasses import FrozenInstanceError

    from fillprob_operator.domain.log_gates import parse_resolution

    first = parse_resolution(line)
    assert parse_resolution(line) is first
    assert first == parse_resolution.__wrapped__(line)
    with pytest.raises(FrozenInstanceError):
        first.mode = "changed"  # type: ignore[misc]
