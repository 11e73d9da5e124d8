"""The pydantic models of spec and status against API.md (defaults, aliases, rules, messages)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import AfterValidator, TypeAdapter, ValidationError

from fillprob_operator.api import (
    DEFAULT_PREFLIGHT_COMMAND,
    FillProbRolloutSpec,
    Phase,
    RiskAppetite,
    RolloutStatus,
    SpecError,
    State,
    Timestamp,
    _utc,
    parse_spec,
    status_from_dict,
)
from fillprob_operator.domain.durations import DURATION_PATTERN
from fillprob_operator.domain.ladder import build_ladder

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"deploymentName": "grinder", "targetPhase": "Canary", "canarySymbols": ["SYM1"]}


def spec_with(**fields) -> dict:
    return {**MINIMAL, **fields}


def problems(body: dict) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(body)
    return str(caught.value)


# --------------------------------------------------------------------------- defaults


def test_defaults_are_api_md_table() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.container_name is None
    assert spec.expand_batches == () and spec.safe_symbols == ()
    assert spec.min_bps is None
    assert spec.risk_appetite is RiskAppetite.MODERATE
    assert spec.observation.shadow == timedelta(hours=24)
    assert spec.observation.canary == timedelta(hours=1)
    assert spec.observation.expand_batch == timedelta(hours=4)
    assert spec.observation.full == timedelta(hours=24)
    assert spec.observation.auto_threshold == timedelta(hours=24)
    assert spec.preflight.enabled is True
    assert spec.preflight.command == DEFAULT_PREFLIGHT_COMMAND
    assert spec.preflight.timeout == timedelta(minutes=10)
    assert spec.prometheus.url is None and spec.prometheus.selector is None
    assert spec.prometheus.interval == timedelta(seconds=30)
    assert spec.gates.max_block_ratio == 0.99
    assert spec.gates.min_orders == 20
    assert spec.gates.threshold_range is None
    assert spec.gates.max_auto_threshold_delta_bps is None
    assert spec.progress_deadline == timedelta(minutes=10)
    assert spec.suspend is False


def test_default_preflight_command_is_the_runbooks() -> None:
    assert list(DEFAULT_PREFLIGHT_COMMAND) == [
        "python3", "-m", "scripts.preflight_fill_prob", "--model", "$(GRINDER_FILL_MODEL_DIR)",
        "--eval", "$(GRINDER_FILL_PROB_EVAL_DIR)", "--auto-threshold",
    ]


@pytest.mark.parametrize(
    "appetite, window",
    [("Conservative", timedelta(hours=24)), ("Moderate", timedelta(hours=4)), ("Aggressive", timedelta(hours=1))],
)
def test_expand_batch_window_follows_risk_appetite(appetite: str, window: timedelta) -> None:
    spec = parse_spec(spec_with(riskAppetite=appetite))
    assert spec.observation.expand_batch == window
    assert spec.observation_window(Phase.EXPAND) == window


def test_explicit_expand_batch_window_wins_over_risk_appetite() -> None:
    spec = parse_spec(spec_with(riskAppetite="Conservative", observation={"expandBatch": "90s"}))
    assert spec.observation_window(Phase.EXPAND) == timedelta(seconds=90)


def test_observation_window_per_phase() -> None:
    spec = parse_spec(spec_with(observation={"shadow": "1h30m", "canary": "250ms", "full": "2h", "autoThreshold": "1.5h"}))
    assert spec.observation_window(Phase.SHADOW) == timedelta(minutes=90)
    assert spec.observation_window(Phase.CANARY) == timedelta(milliseconds=250)
    assert spec.observation_window(Phase.FULL) == timedelta(hours=2)
    assert spec.observation_window(Phase.AUTO_THRESHOLD) == timedelta(minutes=90)


# --------------------------------------------------------------------------- aliases, extra fields


def test_camel_case_aliases_and_field_names_both_parse() -> None:
    by_alias = parse_spec(spec_with(minBps=2500, gates={"maxBlockRatio": 0.5, "thresholdRange": {"minBps": 1, "maxBps": 2}}))
    by_name = FillProbRolloutSpec(deployment_name="grinder", target_phase="Canary", canary_symbols=["SYM1"],
                                  min_bps=2500, gates={"max_block_ratio": 0.5, "threshold_range": {"min_bps": 1, "max_bps": 2}})
    assert by_alias == by_name


def test_dump_is_camel_case_json_with_go_durations_and_round_trips() -> None:
    spec = parse_spec(spec_with(observation={"shadow": "1h30m"}, prometheus={"interval": "2s"}))
    body = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert body["observation"] == {"shadow": "1h30m", "canary": "1h", "expandBatch": "4h", "full": "24h",
                                   "autoThreshold": "24h"}
    assert body["prometheus"]["interval"] == "2s"
    assert body["progressDeadline"] == "10m"
    assert parse_spec(json.loads(json.dumps(body))) == spec


@pytest.mark.parametrize("body", [spec_with(bogus=1), spec_with(gates={"maxBlockRatio": 0.5, "typo": 1}),
                                  spec_with(observation={"expand": "1h"})])
def test_unknown_fields_are_refused(body: dict) -> None:
    assert "unknown field" in problems(body)


def test_the_example_rollout_parses() -> None:
    example = yaml.safe_load((REPO / "examples" / "fillprobrollout.yaml").read_text())
    spec = parse_spec(example["spec"])
    assert spec.target_phase is Phase.AUTO_THRESHOLD


# --------------------------------------------------------------------------- rules and messages


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"deploymentName": "grinder", "targetPhase": "Canary"}, "canarySymbols is required"),
        ({"deploymentName": "grinder", "targetPhase": "Full", "canarySymbols": []}, "unless targetPhase is Shadow"),
        (spec_with(targetPhase="Expand"), "targetPhase Expand needs at least one expandBatches entry"),
        (spec_with(canarySymbols=["SYM1", "SYM1"]), "duplicate symbols in canarySymbols: SYM1"),
        (spec_with(expandBatches=[["SYM1"]]), "SYM1 listed in both canarySymbols and expandBatches"),
        (spec_with(expandBatches=[["SYM2"], ["SYM2"]]), "SYM2 is listed more than once in expandBatches"),
        (spec_with(expandBatches=[["SYM2", "SYM2"]]), "SYM2 is listed more than once in expandBatches"),
        (spec_with(expandBatches=[[]]), "expandBatches[0] is empty"),
        (spec_with(safeSymbols=["SYM9"]), "safeSymbols must be a subset of canarySymbols; not in canarySymbols: SYM9"),
        (spec_with(gates={"thresholdRange": {"minBps": 5000, "maxBps": 1000}}), "minBps (5000) must be <= thresholdRange.maxBps (1000)"),
        (spec_with(prometheus={"interval": "500ms"}), "prometheus.interval must be at least 1s"),
        (spec_with(preflight={"timeout": "0s"}), "preflight.timeout must be at least 1s"),
        (spec_with(progressDeadline="100ms"), "progressDeadline must be at least 1s"),
        (spec_with(observation={"shadow": "10"}), "must be a duration such as 90s, 4h or 1h30m"),
        (spec_with(observation={"full": "4 hours"}), "must be a duration"),
        (spec_with(progressDeadline="1d"), "must be a duration"),
        (spec_with(targetPhase="Preflight"), "targetPhase must be one of Shadow, Canary, Expand, Full, AutoThreshold"),
        (spec_with(targetPhase="Everything"), "spec.targetPhase"),
        (spec_with(riskAppetite="Reckless"), "spec.riskAppetite"),
        (spec_with(canarySymbols=["btcusdt"]), "symbol 'btcusdt' must be 1-32 upper-case letters"),
        (spec_with(canarySymbols=["SYM1,SYM2"]), "not 'A,B'"),
        (spec_with(minBps=10001), "spec.minBps"),
        (spec_with(gates={"maxBlockRatio": 1.5}), "spec.gates.maxBlockRatio"),
        (spec_with(gates={"minOrders": 0}), "spec.gates.minOrders"),
        (spec_with(prometheus={"selector": "pod=grinder"}), "must be a double-quoted string"),
        (spec_with(deploymentName="Grinder_1"), "spec.deploymentName"),
        ({"targetPhase": "Shadow"}, "spec.deploymentName: Field required"),
    ],
)
def test_invalid_specs_say_what_to_fix(body: dict, expected: str) -> None:
    assert expected in problems(body)


def test_shadow_target_needs_no_canary_symbols() -> None:
    spec = parse_spec({"deploymentName": "grinder", "targetPhase": "Shadow"})
    assert spec.canary_symbols == ()


def test_every_problem_is_reported_with_its_path() -> None:
    error = problems(spec_with(minBps=-1, prometheus={"interval": "0s"}))
    assert "spec.minBps" in error and "spec.prometheus.interval" in error


# API.md: "A spec the API server accepts is a spec the operator reads". Each of these is
# admitted by the CRD (a regex's validity is the CRD's RE2 rule, never a parse error here).
@pytest.mark.parametrize(
    "prometheus",
    [
        {"selector": 'pod=~"grinder-(.*"'},  # the user's report: the CRD now refuses it too
        {"selector": 'pod!~"[a-"'},
        {"selector": 'pod=~"a)(b"'},  # valid for Prometheus: ^(?s:a)(b)$
        {"url": "HTTP://prometheus.monitoring.svc:9090"},  # Go lower-cases the scheme
        {"url": "https://user@prom:9090/prefix?x=1"},
    ],
)
def test_what_the_crd_admits_parses(prometheus: dict) -> None:
    parse_spec(spec_with(prometheus=prometheus))


def test_an_invalid_selector_regex_parses_and_says_why() -> None:
    spec = parse_spec(spec_with(prometheus={"selector": 'job="g",pod=~"grinder-(.*"'}))
    (problem,) = spec.prometheus.selector_problems
    assert "selector regex invalid" in problem and 'pod=~"grinder-(.*"' in problem and "missing )" in problem
    assert parse_spec(spec_with(prometheus={"selector": 'pod=~"g-.*"'})).prometheus.selector_problems == ()
    assert parse_spec(MINIMAL).prometheus.selector_problems == ()


def test_the_longest_go_duration_parses_and_a_longer_one_says_so() -> None:
    spec = parse_spec(spec_with(observation={"shadow": "2562047h"}))
    assert spec.observation.shadow == timedelta(hours=2562047)
    assert "at most 2562047h" in problems(spec_with(observation={"shadow": "99999999999h"}))


def test_valid_selector_and_url_are_kept() -> None:
    spec = parse_spec(spec_with(prometheus={"url": "http://127.0.0.1:19090", "selector": 'job="grinder",pod=~"g-.*"'}))
    assert spec.prometheus.selector == 'job="grinder",pod=~"g-.*"'


# --------------------------------------------------------------------------- CRD agreement


def _crd_spec_schema() -> dict:
    crd = yaml.safe_load((REPO / "crds" / "fillprobrollouts.grinder.io.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_duration_grammar_is_the_crds() -> None:
    rules = _crd_spec_schema()["properties"]["progressDeadline"]["x-kubernetes-validations"]
    crd_regex = re.search(r"self\.matches\('([^']*)'\)", rules[0]["rule"]).group(1)
    assert crd_regex == DURATION_PATTERN


def test_default_command_is_the_crds() -> None:
    schema = _crd_spec_schema()["properties"]["preflight"]["properties"]["command"]
    assert tuple(schema["default"]) == DEFAULT_PREFLIGHT_COMMAND


# --------------------------------------------------------------------------- status


def test_status_from_dict_none_when_nothing_written() -> None:
    assert status_from_dict(None) is None
    assert status_from_dict({}) is None
    assert status_from_dict({"kopf": {"progress": {}}}) is None


def test_status_round_trips_through_json_and_ignores_foreign_keys() -> None:
    at = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=timezone.utc)
    status = RolloutStatus(phase=Phase.CANARY, step="Canary", state=State.OBSERVING, observed_generation=3,
                           enforced_symbols=["SYM1"], enforced_symbol_count=1, observation_started_at=at)
    body = status.to_patch_body()
    assert body["observationStartedAt"] == "2026-03-02T09:00:00Z"
    assert body["phase"] == "Canary" and body["state"] == "Observing" and body["observedGeneration"] == 3
    assert "lastRollback" not in body  # exclude_none
    again = status_from_dict({**json.loads(json.dumps(body)), "kopf": {"x": 1}})
    assert again == status


def test_status_that_does_not_parse_raises() -> None:
    with pytest.raises(ValueError, match="status does not parse"):
        status_from_dict({"state": "Sideways"})


def test_clone_model_is_a_deep_copy_that_shares_nothing_mutable():
    """`clone_model` (the working copy decide() makes of status) gives what
    `model_copy(deep=True)` gives: equal, the same fields set, no mutable part shared."""
    import copy as copylib
    from datetime import datetime, timezone

    from fillprob_operator.api import clone_model, status_from_dict

    status = status_from_dict({
        "phase": "Shadow", "step": "Shadow", "state": "Observing", "observedGeneration": 2,
        "enforcedSymbols": ["SYM1"], "appliedSpec": {"deploymentName": "g", "canarySymbols": ["SYM1"]},
        "history": [{"at": "2024-05-01T12:00:00Z", "phase": "Shadow", "step": "Shadow", "action": "Restart",
                     "reason": "StepStarted", "evidence": {"pods": [{"name": "p", "ready": True}], "n": 1.5}}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Observing",
                        "lastTransitionTime": "2024-05-01T12:00:00Z"}],
        "restart": {"seq": 1, "token": "2-1", "issuedAt": "2024-05-01T12:00:00Z", "setEnv": {"A": "1"}},
    })
    status.last_known_good_symbols = status.enforced_symbols  # aliasing, as deepcopy keeps it
    clone = clone_model(status)
    assert clone == status == copylib.deepcopy(status)
    assert clone.model_fields_set == status.model_fields_set
    assert clone.last_known_good_symbols is clone.enforced_symbols
    clone.history[0].evidence["pods"][0]["ready"] = False
    clone.restart.set_env["B"] = "2"
    clone.applied_spec["canarySymbols"].append("SYM2")
    clone.conditions[0].status = "False"
    clone.enforced_symbols.append("SYM9")
    assert status.history[0].evidence["pods"][0]["ready"] is True
    assert status.restart.set_env == {"A": "1"}
    assert status.applied_spec["canarySymbols"] == ["SYM1"]
    assert status.conditions[0].status == "True"
    assert status.enforced_symbols == status.last_known_good_symbols == ["SYM1"]
    assert clone.history[0].at == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- timestamps

OFFSETS = st.one_of(
    st.none(),
    st.just(timezone.utc),
    st.integers(-23 * 60, 23 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes))),
)


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)), OFFSETS)
def test_a_timestamp_is_the_same_instant_in_utc_whole_seconds(value, offset):
    """Whatever the offset (none = UTC): the instant, its microseconds dropped, tzinfo
    `timezone.utc` (the fast path for a zero offset must not differ from the general one)."""
    value = value.replace(tzinfo=offset)
    expected = (value if offset is not None else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    got = _utc(value)
    assert got == expected.replace(microsecond=0)
    assert got.tzinfo is timezone.utc


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30)))
def test_a_timestamp_as_kubernetes_writes_it_parses_to_utc(value):
    text = value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    got = TypeAdapter(Timestamp).validate_python(text)
    assert got == value.replace(tzinfo=timezone.utc, microsecond=0)
    assert got.tzinfo is timezone.utc


def _pydantics_reading(value):
    """What a Timestamp was before `_read_canonical`: pydantic's datetime, then `_utc`; an
    error as the kinds of error pydantic gave."""
    try:
        return TypeAdapter(Annotated[datetime, AfterValidator(_utc)]).validate_python(value)
    except ValidationError as exc:
        return [e["type"] for e in exc.errors()]


def _timestamps_reading(value):
    try:
        return TypeAdapter(Timestamp).validate_python(value)
    except ValidationError as exc:
        return [e["type"] for e in exc.errors()]


DIGITS = st.text("0123456789", min_size=1, max_size=1)
# The canonical shape with any digits (month 13, 29 February of any year, 24:00:00, second 60,
# year 0000 included), other shapes, other types.
CANONICAL_SHAPED = st.tuples(*[DIGITS] * 14).map(
    lambda d: "{}{}{}{}-{}{}-{}{}T{}{}:{}{}:{}{}Z".format(*d))
INSTANTS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
TIMESTAMP_INPUTS = st.one_of(
    CANONICAL_SHAPED,
    INSTANTS.map(lambda v: v.strftime("%Y-%m-%dT%H:%M:%SZ")),
    st.tuples(INSTANTS, st.sampled_from(["%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%Sz", "%Y-%m-%d %H:%M:%SZ",
                                         "%Y-%m-%dT%H:%M:%S+00:00", "%Y-%m-%dT%H:%M:%S-05:30", "%Y-%m-%dT%H:%M:%S",
                                         "%Y-%m-%dT%H:%MZ", " %Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%SZ "]))
    .map(lambda p: p[0].strftime(p[1])),
    st.text(max_size=24),
    st.tuples(INSTANTS, OFFSETS).map(lambda p: p[0].replace(tzinfo=p[1])),
    st.integers(-(10**10), 10**10),
    st.none(),
)


@given(TIMESTAMP_INPUTS)
def test_a_timestamp_reads_as_pydantic_read_it(value):
    """The canonical shape is read without pydantic's parser (a status parse's cost): for any
    input, the same instant with the same tzinfo, or the same kinds of error."""
    got, expected = _timestamps_reading(value), _pydantics_reading(value)
    assert got == expected
    if isinstance(expected, datetime):
        assert got.tzinfo is timezone.utc and expected.tzinfo is timezone.utc


def test_a_specs_json_form_is_its_dump_and_follows_a_copy_that_changes_it():
    """`json_form` is cached in the frozen spec's `__dict__` (a tick's appliedSpec comparison):
    equal to the dump, no part of equality, and gone from a copy whose fields change."""
    spec = parse_spec({"deploymentName": "grinder", "targetPhase": "Canary", "canarySymbols": ["BTCUSDT"]})
    dump = spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert spec.json_form == dump and spec.json_form is spec.json_form
    assert spec == parse_spec(dump)
    suspended = spec.model_copy(update={"suspend": True})
    assert suspended.json_form["suspend"] is True
    assert spec.model_copy().json_form == dump


def test_a_specs_ladder_is_built_once_and_follows_a_copy_that_changes_it():
    """`ladder` is cached like `json_form`: build_ladder's rungs, the same object at every tick,
    no part of equality, and built again for a copy whose fields change."""
    spec = parse_spec({"deploymentName": "grinder", "targetPhase": "Full", "canarySymbols": ["BTCUSDT"],
                       "expandBatches": [["ETHUSDT"]]})
    assert spec.ladder == build_ladder(spec) and spec.ladder is spec.ladder
    assert spec == parse_spec(spec.model_dump(by_alias=True, mode="json", exclude_none=True))
    wider = spec.model_copy(update={"expand_batches": [["ETHUSDT"], ["SOLUSDT"]]})
    assert wider.ladder == build_ladder(wider) != spec.ladder
    assert [step.label for step in wider.ladder] == ["Shadow", "Canary", "Expand 1/2", "Expand 2/2", "Full", "AutoThreshold"]
