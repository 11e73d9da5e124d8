"""Offline validation (fillprob_operator.validation) against crds/fillprobrollouts.grinder.io.yaml.

The invalid cases live in tests/fixtures/invalid_rollouts.yaml, shared with the e2e test that
sends them to a real API server (tests/e2e/test_crd_validation.py), so both tiers expect the
same messages.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from fillprob_operator import validation
from fillprob_operator.validation import (
    BLOCKING_MESSAGE,
    apply_defaults,
    go_float,
    go_quote,
    invalid_message,
    load_crd,
    parse_go_duration,
    validate_manifest,
)

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "fillprobrollouts.grinder.io.yaml"
FIXTURE = ROOT / "tests" / "fixtures" / "invalid_rollouts.yaml"
E2E = ROOT / "tests" / "e2e" / "test_crd_validation.py"
EXAMPLE = ROOT / "examples" / "fillprobrollout.yaml"

DEFAULT_PREFLIGHT_COMMAND = [
    "python3", "-m", "scripts.preflight_fill_prob",
    "--model", "$(GRINDER_FILL_MODEL_DIR)", "--eval", "$(GRINDER_FILL_PROB_EVAL_DIR)",
    "--auto-threshold",
]



def fpr(name: str = "fpr", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "grinder.io/v1alpha1", "kind": "FillProbRollout", "metadata": {"name": name}, "spec": spec}


def canary(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"deploymentName": "grinder", "targetPhase": "Canary", "canarySymbols": ["SYM1", "SYM2"]}
    spec.update(changes)
    return fpr(**spec)


def fixture_cases() -> list[dict[str, Any]]:
    return yaml.safe_load(FIXTURE.read_text(encoding="utf-8"))


def e2e_module() -> Any:
    spec = importlib.util.spec_from_file_location("e2e_crd_validation", E2E)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expectations(case: dict[str, Any]) -> list[str]:
    expect = case["expect"]
    return [expect] if isinstance(expect, str) else list(expect)


# --- the shared invalid cases ------------------------------------------------------------------


@pytest.mark.parametrize("case", fixture_cases(), ids=lambda c: c["name"])
def test_invalid_case_is_refused_with_the_servers_message(case: dict[str, Any]) -> None:
    errors = validate_manifest(copy.deepcopy(case["manifest"]))
    assert errors, f"{case['name']}: accepted"
    message = invalid_message("FillProbRollout.grinder.io", "fpr", errors)
    missing = [e for e in expectations(case) if e not in message]
    assert not missing, f"message lacks {missing}:\n" + "\n".join(errors)


def test_fixture_holds_every_e2e_case() -> None:
    cases = {c["name"]: c for c in fixture_cases()}
    for name, body, expected in e2e_module().INVALID:
        assert name in cases, f"e2e case {name!r} missing from {FIXTURE.name}"
        assert cases[name]["manifest"] == body, f"{name}: manifest differs from the e2e test's"
        assert expectations(cases[name]) == list(expected), f"{name}: expectations differ from the e2e test's"


def test_e2e_valid_cases_are_valid_offline() -> None:
    for name, body in e2e_module().VALID:
        if body is None:
            continue
        assert validate_manifest(copy.deepcopy(body)) == [], name


# --- valid manifests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        fpr(deploymentName="grinder", targetPhase="Shadow"),
        fpr(deploymentName="grinder", targetPhase="Shadow", canarySymbols=[]),
        canary(),
        canary(targetPhase="Expand", expandBatches=[["SYM3"], ["SYM4", "SYM5"]], safeSymbols=["SYM2"]),
        canary(minBps=None, containerName="grinder"),  # null without a default: pruned, as the server does
        canary(preflight=None, gates=None),  # null with a default: defaulted
        canary(observation={"shadow": "10µs", "canary": "1h0m0.5s", "full": "0.5h"}),
        canary(prometheus={"url": "http://[::1]:9090", "selector": 'job="grinder", pod=~"a\\"b.*"'}),
        {**canary(), "status": {"state": "Exploded"}},  # status is not validated on the main endpoint
    ],
    ids=["shadow", "shadow-empty-canary", "canary", "expand", "null-no-default", "null-default", "durations", "prometheus", "status-ignored"],
)
def test_valid_manifest(body: dict[str, Any]) -> None:
    assert validate_manifest(body) == []


# --- the selector's regexes: RE2, as Prometheus (and the API server's CEL matches) ---------------


@pytest.mark.parametrize(
    "selector, valid",
    [
        ('pod=~"grinder-(.*"', False),  # the user's report
        ('pod=~"grinder-\\\\(.*"', True),  # \\( in the quotes: the regex \(
        ('job="(", pod!~"[a-"', False),
        ('job="(", pod=~"a)(b"', True),  # ^(?s:a)(b)$ compiles
        ('a="x=~",b=~"(("', False),  # a value that looks like an operator does not hide b's regex
        ('a=~"\\"("', False),  # \" is a quote: the regex "( is missing a )
        ('a=~"(?=x)"', False),  # RE2 has no lookahead
        ('a=~"x{1001}"', False),
        ('a=~"\\\\pL+"', True),
        ('pod=~"a\\d"', False),  # \d is no PromQL string escape
    ],
)
def test_selector_regexes_are_checked_with_re2(selector: str, valid: bool) -> None:
    errors = validate_manifest(canary(prometheus={"selector": selector}))
    assert (errors == []) is valid, errors
    if not valid:
        assert all(e.startswith("spec.prometheus.selector: Invalid value") for e in errors), errors


def test_an_invalid_regex_says_what_to_fix() -> None:
    (error,) = validate_manifest(canary(prometheus={"selector": 'pod=~"grinder-(.*"'}))
    assert "error parsing regexp: missing ): ^(?s:grinder-(.*)$" in error
    assert "must be a valid RE2 regular expression" in error


@pytest.mark.parametrize("window, valid", [("2562047h", True), ("2562048h", False), ("99999999999h", False)])
def test_observation_windows_end_where_go_durations_end(window: str, valid: bool) -> None:
    errors = validate_manifest(canary(observation={"shadow": window}))
    assert (errors == []) is valid, errors


def test_example_manifest_is_valid() -> None:
    assert validate_manifest(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))) == []


def test_defaults_are_the_api_servers() -> None:
    obj = fpr(deploymentName="grinder", targetPhase="Shadow")
    apply_defaults(obj, load_crd(CRD)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert obj["spec"] == {
        "deploymentName": "grinder",
        "targetPhase": "Shadow",
        "riskAppetite": "Moderate",
        "expandBatches": [],
        "safeSymbols": [],
        "preflight": {"enabled": True, "command": DEFAULT_PREFLIGHT_COMMAND, "timeout": "10m"},
        "prometheus": {"interval": "30s"},
        "gates": {"maxBlockRatio": 0.99, "minOrders": 20},
        "progressDeadline": "10m",
        "suspend": False,
    }


def test_input_is_not_modified() -> None:
    body = fpr(deploymentName="grinder", targetPhase="Shadow")
    before = copy.deepcopy(body)
    validate_manifest(body)
    assert body == before


# --- how the server orders and blocks ------------------------------------------------------------


def test_blocking_schema_error_skips_cel_rules() -> None:
    errors = validate_manifest(canary(canarySymbols=[], riskAppetite="Yolo"))
    assert errors == [
        'spec.riskAppetite: Unsupported value: "Yolo": supported values: "Conservative", "Moderate", "Aggressive"',
        BLOCKING_MESSAGE,
    ]


def test_non_blocking_schema_error_still_runs_cel_rules() -> None:
    errors = validate_manifest(canary(canarySymbols=["lower"], safeSymbols=["SYM9"]))
    assert any("should match" in e for e in errors)
    assert any(e.startswith("spec.safeSymbols: Invalid value: safeSymbols must be a subset") for e in errors)
    assert BLOCKING_MESSAGE not in errors


def test_string_checks_stop_at_the_first_failure() -> None:
    assert validate_manifest(canary(canarySymbols=["s" * 40])) == [
        "spec.canarySymbols[0]: Too long: may not be more than 32 bytes",
        BLOCKING_MESSAGE,
    ]


def test_unknown_fields_warn_mode_prunes_them() -> None:
    assert validate_manifest(canary(canarySymbol=["X"]), field_validation="Warn") == []
    assert validate_manifest(canary(canarySymbol=["X"])) == [
        'FillProbRollout in version "v1alpha1" cannot be handled as a FillProbRollout: '
        'strict decoding error: unknown field "spec.canarySymbol"'
    ]


def test_wrong_api_version_and_kind() -> None:
    body = canary()
    body["apiVersion"] = "grinder.io/v1"
    assert validate_manifest(body) == ['apiVersion: Unsupported value: "grinder.io/v1": supported values: "grinder.io/v1alpha1"']
    body = canary()
    body["kind"] = "Rollout"
    assert validate_manifest(body) == ['kind: Unsupported value: "Rollout": supported values: "FillProbRollout"']


def test_missing_crd_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(validation.ValidationError, match="CRD file not found"):
        validate_manifest(canary(), tmp_path / "nope.yaml")


# --- updates: transition rules and ratcheting ----------------------------------------------------


def test_deployment_name_is_immutable_on_update() -> None:
    old = canary()
    new = canary(deploymentName="other")
    assert validate_manifest(new) == []  # a create: the transition rule does not apply
    assert validate_manifest(new, old=old) == [
        'spec.deploymentName: Invalid value: "other": '
        "deploymentName is immutable: create a new FillProbRollout to drive another Deployment"
    ]
    assert validate_manifest(canary(targetPhase="Shadow"), old=old) == []


def test_unchanged_invalid_value_is_ratcheted_on_update() -> None:
    # A value stored before a rule tightened: the server only warns while it is unchanged.
    old = canary(observation={"shadow": "10"})
    assert validate_manifest(canary(observation={"shadow": "10"}, targetPhase="Full"), old=old) == []
    errors = validate_manifest(canary(observation={"shadow": "11"}), old=old)
    assert errors and errors[0].startswith('spec.observation.shadow: Invalid value: "11": must be a duration')


# --- CEL in cel-python ----------------------------------------------------------------------------


def _rules(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found += node.get("x-kubernetes-validations") or []
        for value in node.values():
            found += _rules(value)
    elif isinstance(node, list):
        for value in node:
            found += _rules(value)
    return found


def test_every_crd_rule_compiles_in_cel_python_or_has_a_python_twin() -> None:
    rules = _rules(load_crd(CRD)["spec"]["versions"])
    assert rules
    for rule in rules:
        compiled = validation._compile(rule["rule"])
        assert not isinstance(compiled, Exception) or rule["rule"].strip() in validation.PYTHON_RULES, rule["rule"]
        if rule.get("messageExpression"):
            assert not isinstance(validation._compile(rule["messageExpression"]), Exception), rule["messageExpression"]


def _crd_with_rule(tmp_path: Path, rule: str) -> Path:
    crd = copy.deepcopy(load_crd(CRD))
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["x-kubernetes-validations"] = [{"rule": rule, "message": "custom rule failed"}]
    path = tmp_path / "crd.yaml"
    path.write_text(yaml.safe_dump(crd), encoding="utf-8")
    return path


def test_a_rule_cel_python_cannot_compile_is_reported_not_passed(tmp_path: Path) -> None:
    rule = "self.?minBps.orValue(0) <= 10000"  # CEL optional syntax: not in cel-python 0.5.0
    errors = validate_manifest(canary(), _crd_with_rule(tmp_path, rule))
    assert len(errors) == 1
    assert errors[0].startswith('spec: Invalid value: "object": offline validator cannot compile this rule')


def test_python_twin_is_used_for_such_a_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rule = "self.?minBps.orValue(0) <= 5000"
    monkeypatch.setitem(validation.PYTHON_RULES, rule, lambda spec, _old: spec.get("minBps", 0) <= 5000)
    path = _crd_with_rule(tmp_path, rule)
    assert validate_manifest(canary(minBps=100), path) == []
    assert validate_manifest(canary(minBps=6000), path) == ["spec: Invalid value: custom rule failed"]


def test_rule_without_message_uses_the_servers_default(tmp_path: Path) -> None:
    path = _crd_with_rule(tmp_path, "self.targetPhase != 'Full'")
    crd = yaml.safe_load(path.read_text(encoding="utf-8"))
    del crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"][0]["message"]
    path.write_text(yaml.safe_dump(crd), encoding="utf-8")
    assert validate_manifest(canary(targetPhase="Full"), path) == ["spec: Invalid value: failed rule: self.targetPhase != 'Full'"]


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("['a', 'b'].join(', ')", "a, b"),
        ("['a', 'b'].join()", "ab"),
        ("isURL('https://prom.example:9090/x')", True),
        ("isURL('prometheus 9090')", False),
        ("isURL('/just/a/path')", True),
        ("url('https://user@prom.example:9090/x?q=1').getScheme()", "https"),
        ("url('https://user@prom.example:9090/x?q=1').getHost()", "prom.example:9090"),
        ("url('https://prom.example:9090/x').getHostname()", "prom.example"),
        ("url('https://prom.example:9090/x').getPort()", "9090"),
        ("url('https://prom.example/x/y').getEscapedPath()", "/x/y"),
        ("'a,b,c'.split(',').size()", 3),
        ("'Hello'.lowerAscii() + 'x'.upperAscii()", "helloX"),
        ("'abcabc'.indexOf('c') + 'abcabc'.lastIndexOf('c')", 7),
        ("[1, 2, 3].isSorted() && [3, 1].isSorted() == false", True),
        ("[1, 2, 3].sum() + [4, 9].max() - [4, 9].min()", 11),
        ("duration('1h30m') == duration('5400s')", True),
        ("duration('10µs') < duration('1ms')", True),
        ("'a=\"x\", b=~\"y\"'.findAll('[a-z] *=~? *\"[^\"]*\"')", ['a="x"', 'b=~"y"']),
        ("'abcdef'.substring(1, 3) + 'abc'.substring(2)", "bcc"),
        ("'a\\nb'.matches('(?s)a.b') && !'ab'.matches('^b')", True),
    ],
)
def test_kubernetes_cel_functions(expression: str, expected: Any) -> None:
    program = validation._compile(expression)
    assert not isinstance(program, Exception), program
    assert program.evaluate({}) == expected


@pytest.mark.parametrize(
    "url, valid",
    [
        ("http://prom:9090", True), ("https://u:p@prom:9090/a#frag", True), ("http://prom:9090/a b", True),
        ("http://[::1]:9090/", True), ("mailto:x", True), ("/abs/path", True), ("*", True),
        ("prom:9090", True),  # scheme "prom", opaque "9090": a URL, just not http(s)
        ("", False), ("prom 9090", False), ("rel/path", False), (":9090", False), ("http://pr om/", False),
        ("http://prom:90a/", False), ("http://prom/%zz", False), ("http://prom/\x01", False),
    ],
)
def test_is_url_is_gos_parse_request_uri(url: str, valid: bool) -> None:
    assert validation._go_parse_request_uri(url) is valid


def test_int32_format_messages() -> None:
    assert validate_manifest(canary(minBps=2500.5))[:2] == [
        'spec.minBps: Invalid value: "float64": spec.minBps in body must be of type int32: "float64"',
        '<nil>: Invalid value: "": Checked value must be of type integer with format int32 in spec.minBps',
    ]
    assert validate_manifest(canary(minBps=2500.0)) == []  # an integral float is an integer


# --- Go formatting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [(1.0, "1"), (0.99, "0.99"), (1.5, "1.5"), (1e6, "1e+06"), (123456.0, "123456"), (1234567.0, "1.234567e+06"),
     (0.0001, "0.0001"), (0.00001, "1e-05"), (-2.5, "-2.5"), (0.0, "0")],
)
def test_go_float(value: float, text: str) -> None:
    assert go_float(value) == text


def test_go_quote() -> None:
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("tab\there\n") == '"tab\\there\\n"'
    assert go_quote("µs\x01") == '"µs\\x01"'


def test_invalid_message_is_the_servers_aggregate() -> None:
    assert invalid_message("FillProbRollout.grinder.io", "x", ["a: b"]) == 'FillProbRollout.grinder.io "x" is invalid: a: b'
    assert invalid_message("FillProbRollout.grinder.io", "x", ["a", "b"]) == 'FillProbRollout.grinder.io "x" is invalid: [a, b]'


@pytest.mark.parametrize(
    "text, nanos",
    [("1h30m", 5400 * 10**9), ("1.5h", 5400 * 10**9), ("500ms", 5 * 10**8), ("10µs", 10_000), ("10us", 10_000),
     ("0", 0), ("-1s", -(10**9)), ("1h1h", 7200 * 10**9), (".5s", 5 * 10**8)],
)
def test_parse_go_duration(text: str, nanos: int) -> None:
    assert parse_go_duration(text) == nanos


def test_one_duration_parser() -> None:
    from fillprob_operator.domain import durations

    assert parse_go_duration is durations.parse_go_duration
    assert parse_go_duration("2562047h47m16.854775807s") == 2**63 - 1


@pytest.mark.parametrize("text", ["", "1d", "10", "h", "1 h", "1h-1m", ".", "2562048h", "99999999999h"])
def test_parse_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="time: invalid duration"):
        parse_go_duration(text)


# --- command line -----------------------------------------------------------------------------------


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(canary()), encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "ConfigMap"}, canary(targetPhase="Partial")]), encoding="utf-8")
    assert validation.main([str(good)]) == 0
    assert "FillProbRollout.grinder.io/fpr valid" in capsys.readouterr().out
    assert validation.main(["--crd", str(CRD), str(bad)]) == 1
    out = capsys.readouterr().out
    assert 'FillProbRollout.grinder.io "fpr" is invalid: [spec.targetPhase: Unsupported value: "Partial"' in out
