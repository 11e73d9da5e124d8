"""The canonical FillProbRollout CRD (crds/fillprobrollouts.grinder.io.yaml) against API.md.

Pure file checks: structure, fields, defaults, printer columns, CEL hygiene, and the
regular expressions the CEL rules use. The CEL rules themselves run only in a real API
server: tests/e2e/test_crd_validation.py. Schema-level examples are validated with
`jsonschema` and `cel-python` (pinned test dependencies).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import re2
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "fillprobrollouts.grinder.io.yaml"
EXAMPLE_PATH = REPO / "examples" / "fillprobrollout.yaml"

# API.md "spec" table, as dotted paths (objects and their leaves).
SPEC_FIELDS = {
    "deploymentName",
    "containerName",
    "targetPhase",
    "canarySymbols",
    "expandBatches",
    "safeSymbols",
    "minBps",
    "riskAppetite",
    "observation",
    "observation.shadow",
    "observation.canary",
    "observation.expandBatch",
    "observation.full",
    "observation.autoThreshold",
    "preflight",
    "preflight.enabled",
    "preflight.command",
    "preflight.timeout",
    "prometheus",
    "prometheus.url",
    "prometheus.selector",
    "prometheus.interval",
    "gates",
    "gates.maxBlockRatio",
    "gates.minOrders",
    "gates.thresholdRange",
    "gates.thresholdRange.minBps",
    "gates.thresholdRange.maxBps",
    "gates.maxAutoThresholdDeltaBps",
    "progressDeadline",
    "suspend",
}

DURATION_FIELDS = [
    "observation.shadow",
    "observation.canary",
    "observation.expandBatch",
    "observation.full",
    "observation.autoThreshold",
    "preflight.timeout",
    "prometheus.interval",
    "progressDeadline",
]

DEFAULT_PREFLIGHT_COMMAND = [
    "python3",
    "-m",
    "scripts.preflight_fill_prob",
    "--model",
    "$(GRINDER_FILL_MODEL_DIR)",
    "--eval",
    "$(GRINDER_FILL_PROB_EVAL_DIR)",
    "--auto-threshold",
]

# Static defaults from API.md; everything else in spec has no schema default.
STATIC_DEFAULTS = {
    "riskAppetite": "Moderate",
    "expandBatches": [],
    "safeSymbols": [],
    "preflight": {},
    "preflight.enabled": True,
    "preflight.command": DEFAULT_PREFLIGHT_COMMAND,
    "preflight.timeout": "10m",
    "prometheus": {},
    "prometheus.interval": "30s",
    "gates": {},
    "gates.maxBlockRatio": 0.99,
    "gates.minOrders": 20,
    "progressDeadline": "10m",
    "suspend": False,
}


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return only


@pytest.fixture(scope="module")
def root_schema(version: dict[str, Any]) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def spec_schema(root_schema: dict[str, Any]) -> dict[str, Any]:
    return root_schema["properties"]["spec"]


@pytest.fixture(scope="module")
def status_schema(root_schema: dict[str, Any]) -> dict[str, Any]:
    return root_schema["properties"]["status"]


def field(spec_schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = spec_schema
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below (and including) `node`, with a readable path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def rules_of(node: dict[str, Any]) -> list[str]:
    return [v["rule"] for v in node.get("x-kubernetes-validations", [])]


# --- resource identity -------------------------------------------------------------------


def test_identity(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "fillprobrollouts.grinder.io"
    spec = crd["spec"]
    assert spec["group"] == "grinder.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "FillProbRollout",
        "listKind": "FillProbRolloutList",
        "plural": "fillprobrollouts",
        "singular": "fillprobrollout",
        "shortNames": ["fpr"],
        "categories": ["grinder"],
    }
    assert version["name"] == "v1alpha1"
    assert version["served"] is True and version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = [
        (c["name"].upper(), c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]
    ]
    assert columns == [
        ("TARGET", "string", ".spec.targetPhase"),
        ("PHASE", "string", ".status.phase"),
        ("STEP", "string", ".status.step"),
        ("STATE", "string", ".status.state"),
        ("SYMBOLS", "integer", ".status.enforcedSymbolCount"),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]


# --- spec structure ----------------------------------------------------------------------


def test_spec_is_structural_without_preserve_unknown(root_schema, spec_schema) -> None:
    assert root_schema["required"] == ["spec"]
    assert "x-kubernetes-preserve-unknown-fields" not in root_schema
    offenders = [
        p for p, n in walk(spec_schema, "spec") if "x-kubernetes-preserve-unknown-fields" in n
    ]
    assert offenders == []
    for path, node in walk(spec_schema, "spec"):
        assert "type" in node, f"{path} has no type (not structural)"


def test_spec_fields_are_exactly_api_md(spec_schema) -> None:
    present = {p for p, _ in walk(spec_schema) if p and "[]" not in p}
    assert present == SPEC_FIELDS


def test_spec_required(spec_schema) -> None:
    assert sorted(spec_schema["required"]) == ["deploymentName", "targetPhase"]
    assert field(spec_schema, "gates.thresholdRange")["required"] == ["minBps", "maxBps"]


@pytest.mark.parametrize(
    "dotted, values",
    [
        ("targetPhase", ["Shadow", "Canary", "Expand", "Full", "AutoThreshold"]),
        ("riskAppetite", ["Conservative", "Moderate", "Aggressive"]),
    ],
)
def test_spec_enums(spec_schema, dotted: str, values: list[str]) -> None:
    assert field(spec_schema, dotted)["enum"] == values


def test_types_and_bounds(spec_schema) -> None:
    def bounds(dotted: str) -> tuple[str, Any, Any]:
        node = field(spec_schema, dotted)
        return node["type"], node.get("minimum"), node.get("maximum")

    assert bounds("minBps") == ("integer", 0, 10000)
    assert bounds("gates.maxBlockRatio") == ("number", 0, 1)
    assert bounds("gates.thresholdRange.minBps") == ("integer", 0, 10000)
    assert bounds("gates.thresholdRange.maxBps") == ("integer", 0, 10000)
    assert bounds("gates.minOrders")[0] == "integer"
    assert bounds("gates.maxAutoThresholdDeltaBps")[0] == "integer"
    for dotted in ("preflight.enabled", "suspend"):
        assert field(spec_schema, dotted)["type"] == "boolean"
    symbol_lists = [field(spec_schema, "canarySymbols"), field(spec_schema, "safeSymbols")]
    symbol_lists.append(field(spec_schema, "expandBatches")["items"])  # one batch
    for node in symbol_lists:
        assert node["type"] == "array"
        assert node["x-kubernetes-list-type"] == "set"
        assert node["items"]["pattern"] == "^[A-Z0-9][A-Z0-9._-]{0,31}$"


def test_static_defaults(spec_schema) -> None:
    for dotted, expected in STATIC_DEFAULTS.items():
        assert field(spec_schema, dotted).get("default") == expected, dotted
    defaulted = {p for p, n in walk(spec_schema) if "default" in n}
    assert defaulted == set(STATIC_DEFAULTS)


def test_observation_windows_are_not_defaulted(spec_schema) -> None:
    # expandBatch's default depends on riskAppetite: the operator computes all windows.
    observation = field(spec_schema, "observation")
    assert "default" not in observation
    assert all("default" not in n for n in observation["properties"].values())


def test_cel_cost_hygiene(spec_schema) -> None:
    """Bounded lists and strings keep the API server's static CEL cost estimate small."""
    for path, node in walk(spec_schema, "spec"):
        if node["type"] == "array":
            assert "maxItems" in node, f"{path} needs maxItems"
        if node["type"] == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path} needs maxLength"


def test_every_rule_has_a_message(root_schema) -> None:
    for path, node in walk(root_schema):
        for v in node.get("x-kubernetes-validations", []):
            assert v.get("message") or v.get("messageExpression"), f"{path}: {v['rule']}"
            assert v.get("reason", "FieldValueInvalid") != "FieldValueDuplicate", (
                "FieldValueDuplicate drops the message at the API server"
            )


def test_message_expressions_have_a_static_size(root_schema) -> None:
    """join() and string() results have no static size: the API server's cost estimate for a
    messageExpression using them exceeds the budget and the CRD is refused."""
    for path, node in walk(root_schema):
        for v in node.get("x-kubernetes-validations", []):
            expression = v.get("messageExpression", "")
            assert ".join(" not in expression and "string(" not in expression, path
            if expression:
                assert v.get("message"), f"{path}: a static fallback message"


def test_cross_field_rules_exist(spec_schema) -> None:
    assert rules_of(field(spec_schema, "deploymentName")) == ["self == oldSelf"]
    spec_rules = " ".join(rules_of(spec_schema))
    assert "self.targetPhase == 'Shadow'" in spec_rules  # canarySymbols required
    assert "self.targetPhase != 'Expand'" in spec_rules  # Expand needs a batch
    assert "s in self.canarySymbols" in spec_rules  # duplicates, subset
    assert "self.safeSymbols.all" in spec_rules
    batch_rules = rules_of(field(spec_schema, "expandBatches"))
    assert "self.all(b, size(b) > 0)" in batch_rules
    assert rules_of(field(spec_schema, "gates.thresholdRange")) == ["self.minBps <= self.maxBps"]
    assert any("duration('1s')" in r for r in rules_of(field(spec_schema, "prometheus.interval")))


# --- the regular expressions the schema and its CEL rules use ----------------------------

CEL_MATCHES = re.compile(r"self\.matches\(r?'(?P<re>[^']*)'\)")


def duration_regex(spec_schema, dotted: str) -> str:
    (first, *_rest) = rules_of(field(spec_schema, dotted))
    return CEL_MATCHES.fullmatch(first).group("re")


def test_all_durations_share_one_format(spec_schema) -> None:
    regexes = {duration_regex(spec_schema, d) for d in DURATION_FIELDS}
    assert len(regexes) == 1
    messages = {
        field(spec_schema, d)["x-kubernetes-validations"][0]["message"] for d in DURATION_FIELDS
    }
    assert messages == {
        "must be a duration such as 90s, 4h or 1h30m: numbers each followed by a unit"
        " (h, m, s, ms), no spaces"
    }


@pytest.mark.parametrize("value", ["90s", "4h", "1h30m", "1.5h", "500ms", "0s", "24h", "2m30s"])
def test_duration_format_accepts(spec_schema, value: str) -> None:
    assert re.fullmatch(duration_regex(spec_schema, "observation.shadow"), value)


@pytest.mark.parametrize("value", ["10", "4 hours", "", "h", "-5m", "1d", "4H", " 4h", "1h 30m"])
def test_duration_format_rejects(spec_schema, value: str) -> None:
    assert not re.fullmatch(duration_regex(spec_schema, "observation.shadow"), value)


@pytest.mark.parametrize("value", ["BTCUSDT", "SYM1", "BTC-USD", "ETH_USDT.P", "1000PEPEUSDT"])
def test_symbol_pattern_accepts(spec_schema, value: str) -> None:
    assert re.fullmatch(field(spec_schema, "canarySymbols")["items"]["pattern"], value)


@pytest.mark.parametrize("value", ["btcusdt", "", "BTC,ETH", "BTC USDT", "-BTC", "A" * 33])
def test_symbol_pattern_rejects(spec_schema, value: str) -> None:
    assert not re.fullmatch(field(spec_schema, "canarySymbols")["items"]["pattern"], value)


def selector_regex(spec_schema) -> str:
    (grammar, _re2_rule) = rules_of(field(spec_schema, "prometheus.selector"))
    return CEL_MATCHES.fullmatch(grammar.strip()).group("re")


@pytest.mark.parametrize(
    "value",
    ['job="grinder"', 'job="grinder",pod=~"grinder-.*"', 'a!="x", b!~"y"', 'l="say \\"hi\\""',
     'pod=~"a\\\\d+"', 'x="tab\\there"'],
)
def test_selector_accepts(spec_schema, value: str) -> None:
    assert re2.search(selector_regex(spec_schema), value)


@pytest.mark.parametrize(
    "value",
    ['{job="grinder"}', "job=grinder", "", 'job="a",', "1job=\"a\"",
     'pod=~"a\\d+"',  # \d is no PromQL string escape (Prometheus refuses it): write \\d
     'pod=~"a\\.b"', 'x="raw\ttab"', 'x="raw\nnewline"', 'x="nul\x00"'],
)
def test_selector_rejects(spec_schema, value: str) -> None:
    assert not re2.search(selector_regex(spec_schema), value)


def test_selector_regexes_are_checked_with_re2(spec_schema) -> None:
    """The CRD can express a regex's validity: CEL's matches() is RE2, as in Prometheus."""
    (_grammar, rule) = field(spec_schema, "prometheus.selector")["x-kubernetes-validations"]
    assert "findAll(" in rule["rule"] and "''.matches('^(?s:' +" in rule["rule"]
    assert "|| true" not in rule["rule"]  # would swallow the runtime error of a bad regex
    assert "RE2" in rule["message"]


def test_observation_windows_end_where_go_durations_end(spec_schema) -> None:
    for dotted in DURATION_FIELDS:
        rules = " ".join(rules_of(field(spec_schema, dotted)))
        assert "duration(self)" in rules, dotted


# --- the models at the edge use the CRD's patterns and bounds (one rule, one home) -----------


def test_api_patterns_are_the_crds(spec_schema) -> None:
    from fillprob_operator.api import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, SYMBOL_PATTERN

    assert field(spec_schema, "deploymentName")["pattern"] == DNS_SUBDOMAIN_PATTERN
    assert field(spec_schema, "containerName")["pattern"] == DNS_LABEL_PATTERN
    for dotted in ("canarySymbols", "safeSymbols"):
        assert field(spec_schema, dotted)["items"]["pattern"] == SYMBOL_PATTERN
    assert field(spec_schema, "expandBatches")["items"]["items"]["pattern"] == SYMBOL_PATTERN


def _pydantic_bounds(model: Any, name: str) -> tuple[Any, Any]:
    low = high = None
    for meta in model.model_fields[name].metadata:
        low = getattr(meta, "ge", low) if getattr(meta, "ge", None) is not None else low
        high = getattr(meta, "le", high) if getattr(meta, "le", None) is not None else high
    return low, high


@pytest.mark.parametrize(
    "model_name, name, dotted",
    [
        ("FillProbRolloutSpec", "min_bps", "minBps"),
        ("Gates", "max_block_ratio", "gates.maxBlockRatio"),
        ("Gates", "min_orders", "gates.minOrders"),
        ("Gates", "max_auto_threshold_delta_bps", "gates.maxAutoThresholdDeltaBps"),
        ("ThresholdRange", "min_bps", "gates.thresholdRange.minBps"),
        ("ThresholdRange", "max_bps", "gates.thresholdRange.maxBps"),
    ],
)
def test_api_bounds_are_the_crds(spec_schema, model_name: str, name: str, dotted: str) -> None:
    """Never stricter than the CRD: the same minimum and maximum (none is also fine)."""
    from fillprob_operator import api

    low, high = _pydantic_bounds(getattr(api, model_name), name)
    node = field(spec_schema, dotted)
    assert low is None or low == node["minimum"]
    assert high is None or high == node["maximum"]


def test_api_defaults_are_the_crds(spec_schema) -> None:
    from fillprob_operator.api import parse_spec
    from fillprob_operator.domain.durations import format_duration

    body = parse_spec({"deploymentName": "g", "targetPhase": "Shadow"}).model_dump(by_alias=True, mode="json")
    for dotted, value in STATIC_DEFAULTS.items():
        if dotted in ("preflight", "prometheus", "gates"):
            continue
        got: Any = body
        for part in dotted.split("."):
            got = got[part]
        if dotted in DURATION_FIELDS:
            assert format_duration(parse_duration_(value)) == got, dotted
        else:
            assert got == value, dotted


def parse_duration_(text: str):
    from fillprob_operator.domain.durations import parse_duration

    return parse_duration(text)


# --- status ------------------------------------------------------------------------------


def test_status_schema(status_schema) -> None:
    assert status_schema["x-kubernetes-preserve-unknown-fields"] is True
    props = status_schema["properties"]
    assert props["phase"]["enum"] == [
        "Preflight", "Shadow", "Canary", "Expand", "Full", "AutoThreshold",
    ]
    assert props["state"]["enum"] == [
        "Pending", "Preflight", "Restarting", "Verifying", "Observing", "Passed", "Halted",
        "RolledBack", "Suspended",
    ]
    assert props["observedGeneration"]["type"] == "integer"
    assert props["enforcedSymbolCount"]["type"] == "integer"
    for name in ("enforcedSymbols", "lastKnownGoodSymbols"):
        assert props[name]["type"] == "array"
    for name in ("observationStartedAt", "observationEndsAt"):
        assert props[name]["format"] == "date-time"
    assert set(props["threshold"]["properties"]) == {
        "configuredBps", "recommendedBps", "effectiveBps", "mode",
    }
    assert set(props["lastRollback"]["properties"]) == {"playbook", "reason", "at", "evidence"}
    assert props["lastRollback"]["properties"]["evidence"]["x-kubernetes-preserve-unknown-fields"]
    condition = props["conditions"]["items"]
    assert set(condition["properties"]) == {
        "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration",
    }
    assert props["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    history = props["history"]["items"]["properties"]
    assert set(history) == {"at", "phase", "step", "action", "reason", "evidence"}
    assert history["evidence"]["x-kubernetes-preserve-unknown-fields"] is True


# --- schema-level examples (jsonschema, when installed) ----------------------------------


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 (Kubernetes structural subset) -> JSON Schema; unknown fields rejected
    (as with `kubectl apply`'s strict field validation) unless preserve-unknown-fields."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "default"}
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    return out


def load_example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_PATH.read_text())


MINIMAL = {
    "apiVersion": "grinder.io/v1alpha1",
    "kind": "FillProbRollout",
    "metadata": {"name": "x"},
    "spec": {"deploymentName": "grinder", "targetPhase": "Shadow"},
}


def with_spec(**changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        node = obj["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(leaf)
        else:
            node[leaf] = value
    return obj


DELETE = object()


@pytest.fixture(scope="module")
def validator(root_schema):
    import jsonschema
    schema = to_json_schema(root_schema)
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def test_example_is_valid(validator) -> None:
    assert list(validator.iter_errors(load_example())) == []


@pytest.mark.parametrize(
    "obj",
    [
        MINIMAL,
        with_spec(targetPhase="Canary", canarySymbols=["SYM1"], minBps=0),
        with_spec(gates__maxBlockRatio=1, gates__thresholdRange={"minBps": 0, "maxBps": 10000}),
        with_spec(expandBatches=[["A"], ["B", "C"]], prometheus__url="http://p:9090"),
    ],
)
def test_valid_examples(validator, obj) -> None:
    assert list(validator.iter_errors(obj)) == []


@pytest.mark.parametrize(
    "obj, where",
    [
        (with_spec(deploymentName=DELETE), "deploymentName"),
        (with_spec(targetPhase=DELETE), "targetPhase"),
        (with_spec(targetPhase="Partial"), "spec.targetPhase"),
        (with_spec(riskAppetite="Yolo"), "spec.riskAppetite"),
        (with_spec(minBps=10001), "spec.minBps"),
        (with_spec(minBps=-1), "spec.minBps"),
        (with_spec(gates__maxBlockRatio=1.5), "spec.gates.maxBlockRatio"),
        (with_spec(gates__minOrders=0), "spec.gates.minOrders"),
        (with_spec(gates__thresholdRange={"minBps": 10}), "maxBps"),
        (with_spec(canarySymbols=["btcusdt"]), "spec.canarySymbols.0"),
        (with_spec(canarySymbols=["SYM1", "SYM1"]), "spec.canarySymbols"),
        (with_spec(expandBatches=[["SYM3", "SYM3"]]), "spec.expandBatches.0"),
        (with_spec(canarySymbols=[f"S{i}" for i in range(51)]), "spec.canarySymbols"),
        (with_spec(deploymentName="Grinder_Main"), "spec.deploymentName"),
        (with_spec(canarySymbol=["SYM1"]), "canarySymbol"),  # typo: unknown field
        (with_spec(suspend="yes"), "spec.suspend"),
        (with_spec(preflight__command=[]), "spec.preflight.command"),
    ],
)
def test_invalid_examples(validator, obj, where: str) -> None:
    errors = list(validator.iter_errors(obj))
    assert len(errors) == 1, [e.message for e in errors]
    (error,) = errors
    assert where in ".".join(map(str, error.absolute_path)) + " " + error.message


# --- the CEL rules, evaluated with cel-python (when installed) ---------------------------
# The API server (cel-go) is the authority (tests/e2e/test_crd_validation.py); this tier
# checks the rules' logic in milliseconds. Rules using Kubernetes-only CEL libraries
# (isURL/url) and transition rules (oldSelf) are left to e2e.

K8S_ONLY = ("isURL(", "url(", "oldSelf")


def cel_violations(schema: dict[str, Any], value: Any) -> list[str]:
    """Messages of the rules `value` breaks, walking the schema as the API server does."""
    import celpy
    env = celpy.Environment()
    broken = []
    for v in schema.get("x-kubernetes-validations", []):
        if any(marker in v["rule"] for marker in K8S_ONLY):
            continue
        program = env.program(env.compile(v["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        assert isinstance(result, celpy.celtypes.BoolType), (v["rule"], result)
        if not result:
            broken.append(v["message"])
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                broken += cel_violations(child, value[name])
    if isinstance(value, list) and "items" in schema:
        for item in value:
            broken += cel_violations(schema["items"], item)
    return broken


@pytest.mark.parametrize(
    "spec",
    [
        {"deploymentName": "g", "targetPhase": "Shadow"},
        {"deploymentName": "g", "targetPhase": "Shadow", "canarySymbols": []},
        {"deploymentName": "g", "targetPhase": "Canary", "canarySymbols": ["A"]},
        {"deploymentName": "g", "targetPhase": "Full", "canarySymbols": ["A"], "expandBatches": []},
        {
            "deploymentName": "g",
            "targetPhase": "Expand",
            "canarySymbols": ["A", "B"],
            "expandBatches": [["C"], ["D", "E"]],
            "safeSymbols": ["B"],
            "observation": {"shadow": "90s", "canary": "1h30m", "expandBatch": "1.5h"},
            "prometheus": {"interval": "1s"},
            "gates": {"thresholdRange": {"minBps": 100, "maxBps": 100}},
            "progressDeadline": "10m",
            "preflight": {"timeout": "30s"},
        },
    ],
)
def test_cel_accepts(spec_schema, spec: dict[str, Any]) -> None:
    assert cel_violations(spec_schema, spec) == []


BASE = {"deploymentName": "g", "targetPhase": "Canary", "canarySymbols": ["A", "B"]}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"canarySymbols": []}, "canarySymbols is required"),
        ({"targetPhase": "AutoThreshold", "canarySymbols": None}, "canarySymbols is required"),
        ({"targetPhase": "Expand"}, "targetPhase Expand needs at least one expandBatches entry"),
        ({"expandBatches": [["C", "A"]]}, "duplicate symbol"),
        ({"expandBatches": [["C"], ["D", "C"]]}, "duplicate symbol"),
        ({"expandBatches": [["C"], []]}, "must not be empty"),
        ({"safeSymbols": ["A", "Z"]}, "must be a subset"),
        ({"targetPhase": "Shadow", "canarySymbols": None, "safeSymbols": ["A"]}, "must be a subset"),
        ({"observation": {"shadow": "10"}}, "must be a duration"),
        ({"observation": {"full": "4 hours"}}, "must be a duration"),
        ({"prometheus": {"interval": "500ms"}}, "prometheus.interval must be at least 1s"),
        ({"preflight": {"timeout": "0s"}}, "preflight.timeout must be at least 1s"),
        ({"progressDeadline": "0.5s"}, "progressDeadline must be at least 1s"),
        ({"gates": {"thresholdRange": {"minBps": 10, "maxBps": 9}}}, "minBps must be <="),
        ({"prometheus": {"selector": '{job="g"}'}}, "label matchers without braces"),
    ],
)
def test_cel_rejects(spec_schema, changes: dict[str, Any], message: str) -> None:
    spec = {**BASE, **changes}
    spec = {k: v for k, v in spec.items() if v is not None}
    broken = cel_violations(spec_schema, spec)
    assert len(broken) == 1 and message in broken[0], broken
