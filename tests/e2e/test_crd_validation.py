"""The FillProbRollout CRD in a real API server: what `kubectl apply` accepts and rejects.

Installs crds/fillprobrollouts.grinder.io.yaml (create, or replace when present; never
deleted: other e2e tests use it), then sends invalid FillProbRollouts (server-side dry
run, strict field validation) and checks each is refused with a message that names the
problem; valid ones are accepted and come back with the schema's defaults.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "fillprobrollouts.grinder.io.yaml"
EXAMPLE_PATH = REPO / "examples" / "fillprobrollout.yaml"
CRD_NAME = "fillprobrollouts.grinder.io"
GROUP, VERSION, PLURAL = "grinder.io", "v1alpha1", "fillprobrollouts"

DEFAULT_PREFLIGHT_COMMAND = [
    "python3", "-m", "scripts.preflight_fill_prob",
    "--model", "$(GRINDER_FILL_MODEL_DIR)", "--eval", "$(GRINDER_FILL_PROB_EVAL_DIR)",
    "--auto-threshold",
]

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5) -> T:
    """Poll probe until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported at the deadline
            last = exc
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def fpr(name: str = "fpr", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FillProbRollout",
        "metadata": {"name": name},
        "spec": spec,
    }


# A valid Canary rollout; each invalid case below changes one thing.
CANARY = {
    "deploymentName": "grinder",
    "targetPhase": "Canary",
    "canarySymbols": ["SYM1", "SYM2"],
}
DROP = object()


def canary(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(CANARY)
    for key, value in changes.items():
        if value is DROP:
            spec.pop(key, None)
        else:
            spec[key] = value
    return fpr(**spec)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd(k8s_api) -> dict[str, Any]:
    """The CRD from crds/, installed and Established; returns the manifest."""
    ext = client.ApiextensionsV1Api(k8s_api)
    manifest = yaml.safe_load(CRD_PATH.read_text())

    def install() -> bool:
        body = copy.deepcopy(manifest)
        try:
            resp = ext.read_custom_resource_definition(CRD_NAME, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise
            ext.create_custom_resource_definition(body, _preload_content=False)
            return True
        body["metadata"]["resourceVersion"] = json.loads(resp.data)["metadata"]["resourceVersion"]
        try:
            ext.replace_custom_resource_definition(CRD_NAME, body, _preload_content=False)
        except ApiException as exc:
            if exc.status == 409:  # someone else updated it meanwhile: read and retry
                return False
            raise
        return True

    try:
        wait_for("the CRD to be created or replaced", install, timeout=30)
    except ApiException as exc:
        pytest.fail(f"the API server refused {CRD_PATH.name}: {exc.status} {exc.body}")

    def established() -> bool:
        resp = ext.read_custom_resource_definition(CRD_NAME, _preload_content=False)
        conditions = {c["type"]: c["status"] for c in json.loads(resp.data).get("status", {}).get("conditions", [])}
        return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"

    wait_for(f"{CRD_NAME} Established", established, timeout=60)
    return manifest


@pytest.fixture(scope="module")
def crd_namespace(k8s_api, crd) -> Iterator[str]:
    name = f"e2e-crd-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    objects = client.CustomObjectsApi(k8s_api)

    # A replaced CRD's new schema reaches the request handlers shortly after Established:
    # wait until the server both defaults like this file and enforces a CEL rule of it.
    def schema_is_live() -> bool:
        valid = objects.create_namespaced_custom_object(
            GROUP, VERSION, name, PLURAL, fpr(deploymentName="g", targetPhase="Shadow"), dry_run="All"
        )
        if valid["spec"].get("preflight", {}).get("command") != DEFAULT_PREFLIGHT_COMMAND:
            return False
        try:
            objects.create_namespaced_custom_object(
                GROUP, VERSION, name, PLURAL, canary(safeSymbols=["SYM9"]), dry_run="All"
            )
        except ApiException as exc:
            return exc.status == 422 and "must be a subset" in exc.body
        return False

    wait_for("the CRD's schema to be served", schema_is_live, timeout=60)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def objects(k8s_api) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api)


def dry_run_create(objects: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, dry_run="All", field_validation="Strict"
    )


def rejection(call: Callable[[], object]) -> tuple[int, str]:
    """(HTTP status, the server's message) of a call that must fail."""
    try:
        result = call()
    except ApiException as exc:
        try:
            message = json.loads(exc.body)["message"]
        except (TypeError, ValueError, KeyError):
            message = str(exc.body)
        return exc.status, message
    pytest.fail(f"accepted, expected a rejection: {json.dumps(result)[:400]}")


# --- invalid specs: each refused, with a message that says what to fix ------------------

INVALID = [
    ("missing deploymentName", canary(deploymentName=DROP), ["spec.deploymentName: Required value"]),
    ("missing targetPhase", canary(targetPhase=DROP), ["spec.targetPhase: Required value"]),
    ("bad targetPhase enum", canary(targetPhase="Partial"),
     ['spec.targetPhase: Unsupported value: "Partial"', '"Shadow"', '"AutoThreshold"']),
    ("bad riskAppetite enum", canary(riskAppetite="Yolo"),
     ['spec.riskAppetite: Unsupported value: "Yolo"', '"Conservative"']),
    ("Canary without canarySymbols", canary(canarySymbols=DROP),
     ["spec.canarySymbols: Required value", "canarySymbols is required", "unless targetPhase is Shadow"]),
    ("Full with empty canarySymbols", canary(targetPhase="Full", canarySymbols=[]),
     ["canarySymbols is required"]),
    ("lower-case symbol", canary(canarySymbols=["btcusdt"]),
     ['spec.canarySymbols[0]: Invalid value: "btcusdt"', "should match"]),
    ("symbol twice in canarySymbols", canary(canarySymbols=["SYM1", "SYM1"]),
     ['spec.canarySymbols[1]: Duplicate value: "SYM1"']),
    ("symbol in canarySymbols and a batch", canary(expandBatches=[["SYM3"], ["SYM4", "SYM2"]]),
     ["spec.expandBatches", "duplicate symbol: SYM2 is listed in both canarySymbols and expandBatches"]),
    ("symbol in two batches", canary(expandBatches=[["SYM3", "SYM4"], ["SYM5", "SYM3"]]),
     ["spec.expandBatches", "duplicate symbol: SYM3", "more than one expandBatches entry"]),
    ("symbol twice in one batch", canary(expandBatches=[["SYM3", "SYM3"]]),
     ['spec.expandBatches[0][1]: Duplicate value: "SYM3"']),
    ("empty batch", canary(expandBatches=[["SYM3"], []]),
     ["spec.expandBatches", "must not be empty"]),
    ("Expand without batches", canary(targetPhase="Expand"),
     ["spec.expandBatches: Required value", "targetPhase Expand needs at least one expandBatches entry"]),
    ("safeSymbols not a subset", canary(safeSymbols=["SYM1", "SYM7"]),
     ["spec.safeSymbols", "safeSymbols must be a subset of canarySymbols: SYM7 is not in canarySymbols"]),
    ("minBps above 10000", canary(minBps=10001),
     ["spec.minBps: Invalid value: 10001", "less than or equal to 10000"]),
    ("negative minBps", canary(minBps=-1), ["spec.minBps", "greater than or equal to 0"]),
    ("maxBlockRatio above 1", canary(gates={"maxBlockRatio": 1.5}),
     ["spec.gates.maxBlockRatio", "less than or equal to 1"]),
    ("minOrders zero", canary(gates={"minOrders": 0}),
     ["spec.gates.minOrders", "greater than or equal to 1"]),
    ("thresholdRange inverted", canary(gates={"thresholdRange": {"minBps": 5000, "maxBps": 1000}}),
     ["spec.gates.thresholdRange", "thresholdRange.minBps must be <= thresholdRange.maxBps"]),
    ("thresholdRange without maxBps", canary(gates={"thresholdRange": {"minBps": 5000}}),
     ["spec.gates.thresholdRange.maxBps: Required value"]),
    ("duration without unit", canary(observation={"shadow": "10"}),
     ['spec.observation.shadow: Invalid value', "must be a duration such as 90s, 4h or 1h30m"]),
    ("duration in words", canary(observation={"canary": "4 hours"}),
     ["spec.observation.canary", "must be a duration such as 90s, 4h or 1h30m"]),
    ("progressDeadline in days", canary(progressDeadline="1d"),
     ["spec.progressDeadline", "must be a duration such as 90s, 4h or 1h30m"]),
    ("interval below 1s", canary(prometheus={"interval": "500ms"}),
     ["spec.prometheus.interval", "prometheus.interval must be at least 1s"]),
    ("preflight.timeout zero", canary(preflight={"timeout": "0s"}),
     ["spec.preflight.timeout", "preflight.timeout must be at least 1s"]),
    ("empty preflight.command", canary(preflight={"command": []}),
     ["spec.preflight.command", "at least 1 items"]),
    ("prometheus.url not http", canary(prometheus={"url": "ftp://prometheus:9090"}),
     ["spec.prometheus.url", "must be an absolute http or https URL"]),
    ("prometheus.url not a URL", canary(prometheus={"url": "prometheus 9090"}),
     ["spec.prometheus.url", "must be an absolute http or https URL"]),
    ("selector with braces", canary(prometheus={"selector": '{job="grinder"}'}),
     ["spec.prometheus.selector", "must be PromQL label matchers without braces"]),
    ("deploymentName not a DNS name", canary(deploymentName="Grinder_Main"),
     ['spec.deploymentName: Invalid value: "Grinder_Main"', "should match"]),
    ("suspend as a string", canary(suspend="yes"),
     ["spec.suspend", "must be of type boolean"]),
    ("misspelt field (strict)", canary(canarySymbol=["SYM1"]),
     ['unknown field "spec.canarySymbol"']),
    ("too many canarySymbols", canary(canarySymbols=[f"S{i}" for i in range(51)]),
     ["spec.canarySymbols: Too many: 51", "at most 50 items"]),
    ("no spec", {k: v for k, v in fpr().items() if k != "spec"}, ["spec: Required value"]),
]


@pytest.mark.parametrize("body, expected", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_spec_is_rejected(objects, crd_namespace, body, expected) -> None:
    status, message = rejection(lambda: dry_run_create(objects, crd_namespace, body))
    assert status in (400, 422), (status, message)
    missing = [e for e in expected if e not in message]
    assert not missing, f"message lacks {missing}: {message}"


# --- valid specs: accepted, defaults applied ---------------------------------------------

VALID = [
    ("minimal Shadow", fpr(deploymentName="grinder", targetPhase="Shadow")),
    ("Shadow with empty canarySymbols", fpr(deploymentName="grinder", targetPhase="Shadow", canarySymbols=[])),
    ("Canary", canary()),
    ("Full without batches", canary(targetPhase="Full", minBps=0)),
    ("every field", canary(
        targetPhase="AutoThreshold",
        containerName="grinder",
        expandBatches=[["SYM3", "SYM4"], ["SYM5"]],
        safeSymbols=["SYM1"],
        minBps=10000,
        riskAppetite="Conservative",
        observation={"shadow": "90s", "canary": "1h30m", "expandBatch": "1.5h", "full": "24h", "autoThreshold": "500ms"},
        preflight={"enabled": False, "command": ["true"], "timeout": "1s"},
        prometheus={"url": "https://prometheus.monitoring.svc:9090/prom", "selector": 'job="grinder",pod=~"grinder-.*"', "interval": "1s"},
        gates={"maxBlockRatio": 1, "minOrders": 1, "thresholdRange": {"minBps": 0, "maxBps": 10000}, "maxAutoThresholdDeltaBps": 0},
        progressDeadline="2m",
        suspend=True,
    )),
    ("examples/fillprobrollout.yaml", yaml.safe_load(EXAMPLE_PATH.read_text()) if EXAMPLE_PATH.is_file() else None),
]


@pytest.mark.parametrize("body", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_spec_is_accepted(objects, crd_namespace, body) -> None:
    if body is None:
        pytest.fail(f"{EXAMPLE_PATH} is missing")
    try:
        created = dry_run_create(objects, crd_namespace, body)
    except ApiException as exc:
        pytest.fail(f"refused: {exc.status} {exc.body}")
    # Nothing the user wrote was dropped or rewritten (defaults only add).
    assert_contains(created["spec"], body["spec"], "spec")


def assert_contains(actual: Any, written: Any, path: str) -> None:
    if isinstance(written, dict):
        assert isinstance(actual, dict), path
        for key, value in written.items():
            assert key in actual, f"{path}.{key} was dropped"
            assert_contains(actual[key], value, f"{path}.{key}")
    else:
        assert actual == written, path


def test_defaults_are_applied_and_read_back(objects, crd_namespace) -> None:
    name = f"defaults-{uuid.uuid4().hex[:6]}"
    objects.create_namespaced_custom_object(
        GROUP, VERSION, crd_namespace, PLURAL, fpr(name, deploymentName="grinder", targetPhase="Shadow"),
        field_validation="Strict",
    )
    spec = objects.get_namespaced_custom_object(GROUP, VERSION, crd_namespace, PLURAL, name)["spec"]
    assert spec == {
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
        # no `observation`: its windows depend on riskAppetite; the operator computes them
    }


# --- updates -----------------------------------------------------------------------------


def merge_patch(objects, namespace: str, name: str, patch: dict[str, Any], status: bool = False) -> dict[str, Any]:
    call = objects.patch_namespaced_custom_object_status if status else objects.patch_namespaced_custom_object
    return call(GROUP, VERSION, namespace, PLURAL, name, patch, _content_type="application/merge-patch+json")


def test_deployment_name_is_immutable(objects, crd_namespace) -> None:
    name = f"immutable-{uuid.uuid4().hex[:6]}"
    objects.create_namespaced_custom_object(GROUP, VERSION, crd_namespace, PLURAL, fpr(name, **CANARY))

    status, message = rejection(
        lambda: merge_patch(objects, crd_namespace, name, {"spec": {"deploymentName": "other"}})
    )
    assert status == 422, message
    assert "spec.deploymentName" in message and "deploymentName is immutable" in message, message

    # A full replace (kubectl apply / GitOps) with a new deploymentName is refused the same way.
    current = objects.get_namespaced_custom_object(GROUP, VERSION, crd_namespace, PLURAL, name)
    current["spec"]["deploymentName"] = "other"
    status, message = rejection(
        lambda: objects.replace_namespaced_custom_object(GROUP, VERSION, crd_namespace, PLURAL, name, current)
    )
    assert status == 422 and "deploymentName is immutable" in message, message

    # Other fields still change, and the same deploymentName is fine.
    patched = merge_patch(objects, crd_namespace, name, {"spec": {"deploymentName": "grinder", "targetPhase": "Shadow"}})
    assert patched["spec"]["targetPhase"] == "Shadow"
    assert patched["spec"]["deploymentName"] == "grinder"

    # An update is validated like a create.
    status, message = rejection(
        lambda: merge_patch(objects, crd_namespace, name, {"spec": {"safeSymbols": ["SYM9"]}})
    )
    assert status == 422 and "must be a subset of canarySymbols" in message, message


def test_status_subresource_and_printer_columns(objects, crd_namespace, testbed) -> None:
    name = f"status-{uuid.uuid4().hex[:6]}"
    objects.create_namespaced_custom_object(GROUP, VERSION, crd_namespace, PLURAL, fpr(name, **CANARY))
    status = {
        "phase": "Canary",
        "step": "Canary",
        "state": "Observing",
        "observedGeneration": 1,
        "enforcedSymbols": ["SYM1", "SYM2"],
        "enforcedSymbolCount": 2,
        "lastKnownGoodSymbols": [],
        "observationStartedAt": "2026-01-01T00:00:00Z",
        "observationEndsAt": "2026-01-01T01:00:00Z",
        "threshold": {"configuredBps": 2500, "recommendedBps": 2400, "effectiveBps": 2500, "mode": "recommend_only"},
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Observing", "message": "window open",
             "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1},
        ],
        "history": [
            {"at": "2026-01-01T00:00:00Z", "phase": "Canary", "step": "Canary", "action": "Restart",
             "reason": "ObservationPassed", "evidence": {"cb_trips": 0, "lines": ["FILL_PROB_THRESHOLD_RESOLUTION_OK"]}},
        ],
        "internalBookkeeping": {"restartToken": "abc"},  # operator-internal: kept, not pruned
    }
    written = merge_patch(objects, crd_namespace, name, {"status": status}, status=True)
    assert written["status"] == status
    # The status subresource does not touch spec; the main resource ignores status.
    assert written["spec"]["targetPhase"] == "Canary"
    # The status is one atomic field (the CRD's x-kubernetes-map-type): its writer's
    # managedFields entry names `f:status` alone, not every field in it (issue 10: that entry was
    # a quarter of each rollout's body, in every watch event and in kopf's copy of each rollout).
    owned = [e.get("fieldsV1") for e in written["metadata"].get("managedFields") or () if e.get("subresource") == "status"]
    assert owned == [{"f:status": {}}], owned

    rejected_status, message = rejection(
        lambda: merge_patch(objects, crd_namespace, name, {"status": {"state": "Exploded"}}, status=True)
    )
    assert rejected_status == 422 and 'status.state: Unsupported value: "Exploded"' in message, message

    env = {**os.environ, "KUBECONFIG": testbed.kubeconfig}
    for resource in ("fpr", "grinder"):  # the short name and the category
        out = subprocess.run(
            [testbed.kubectl, "get", resource, "-n", crd_namespace, name],
            capture_output=True, text=True, timeout=30, env=env, check=False,
        )
        assert out.returncode == 0, out.stderr
        header, row = out.stdout.splitlines()[:2]
        assert header.split() == ["NAME", "TARGET", "PHASE", "STEP", "STATE", "SYMBOLS", "AGE"], out.stdout
        assert row.split()[:6] == [name, "Canary", "Canary", "Canary", "Observing", "2"], out.stdout
