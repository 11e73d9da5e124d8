"""Pure helpers around the adapters: series splitting, rollback and alert annotations, logs, settings."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pytest

from fillprob_operator.adapters.executor import ExecutionContext, Executor
from fillprob_operator.adapters.kubernetes import (
    alert_annotation_name,
    decode_rollback_request,
    encode_rollback_request,
    is_alert_annotation,
)
from fillprob_operator.adapters.prometheus import Sample, parse_result, split_by_pod
from fillprob_operator.domain.actions import ClearRollbackAnnotation, EmitEvent, PatchEnv
from fillprob_operator.domain.observations import (
    DeploymentObservation,
    MetricsObservation,
    Observations,
    PodMetrics,
    RollbackRequest,
)
from fillprob_operator.domain.selector import SelectorError, default_selector
from fillprob_operator.metrics import OperatorMetrics
from fillprob_operator.reconciler import (
    ALERTS_PER_TICK,
    alert_requests_from_annotations,
    evaluation_interval,
    kv,
    rollback_request_from_annotation,
    rollout_selector,
    taken_request_keys,
)
from fillprob_operator.settings import Settings

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def test_split_by_pod_gauges_counters_and_symbols():
    pod = {"namespace": "ns", "pod": "g-1-a"}
    results = {
        "enforce_enabled": parse_result([
            {"metric": pod, "value": [100.0, "1"]},
            {"metric": {**pod, "job": "dup"}, "value": [101.0, "0"]},  # a second scrape job: max
        ]),
        "circuit_breaker_trips": parse_result([{"metric": pod, "value": [100.0, "2"]}]),
        "auto_threshold_bps": parse_result([{"metric": pod, "value": [100.0, "NaN"]}]),  # no data
        "blocks_by_symbol": parse_result([
            {"metric": {**pod, "symbol": "SYM1"}, "value": [102.0, "5"]},
            {"metric": pod, "value": [102.0, "9"]},  # no symbol label: not a per-symbol series
        ]),
        "orders_by_symbol": (),
    }
    pods = split_by_pod(results, lambda labels: labels.get("namespace") == "ns")
    assert list(pods) == ["g-1-a"]
    metrics = pods["g-1-a"]
    assert metrics.enforce_enabled == 1.0
    assert metrics.circuit_breaker_trips == 2.0
    assert metrics.auto_threshold_bps is None
    assert metrics.allowlist_enabled is None
    assert dict(metrics.blocks_by_symbol) == {"SYM1": 5.0}
    assert dict(metrics.orders_by_symbol) == {}
    assert metrics.sampled_at == datetime.fromtimestamp(102.0, tz=timezone.utc)


def test_parse_result_skips_malformed_values():
    assert parse_result([{"metric": {}, "value": [1, "x"]}, {"metric": {}}, {"metric": {"a": "b"}, "value": [1, "+Inf"]}]) == ()
    assert parse_result([{"metric": {"a": "b"}, "value": [1, "3"]}]) == (Sample({"a": "b"}, 1.0, 3.0),)


def rollout(annotations, managed_fields=()):
    return {"metadata": {"name": "r", "namespace": "ns", "uid": "uid-1", "resourceVersion": "42",
                         "annotations": annotations, "managedFields": list(managed_fields)}}


def test_rollback_annotation_becomes_a_request_keyed_by_when_it_was_set():
    fields = [
        {"manager": "kopf", "time": "2024-05-01T11:00:00Z",
         "fieldsV1": {"f:metadata": {"f:annotations": {"f:grinder.io/restart": {}}}}},
        {"manager": "kubectl-annotate", "time": "2024-05-01T11:59:00Z",
         "fieldsV1": {"f:metadata": {"f:annotations": {"f:grinder.io/rollback": {}, "f:grinder.io/rollback-reason": {}}}}},
    ]
    request = rollback_request_from_annotation(
        rollout({"grinder.io/rollback": " r2", "grinder.io/rollback-reason": "pager: fills dropped"}, fields)
    )
    assert request.playbook == "R2"
    assert request.reason == "ManualRollback"
    assert request.key == "annotation/uid-1/R2/2024-05-01T11:59:00Z"
    assert request.source == "annotation grinder.io/rollback=R2 by kubectl-annotate: pager: fills dropped"
    assert request.evidence == {"annotation": " r2", "manager": "kubectl-annotate",
                                "setAt": "2024-05-01T11:59:00Z", "why": "pager: fills dropped"}
    assert rollback_request_from_annotation(rollout({})) is None
    assert rollback_request_from_annotation(rollout({"grinder.io/rollback": "R9"})).playbook == "R9"  # the domain rejects it
    assert rollback_request_from_annotation(rollout({"grinder.io/rollback": "R1"})).key == "annotation/uid-1/R1/rv42"


def alert_request(fingerprint="fp1", starts_at="2026-01-02T03:04:05Z", playbook="R2"):
    return RollbackRequest(
        playbook=playbook, reason="AlertFired",
        source=f'FillProbCircuitBreakerTripped{{fillprob_rollout="r",namespace="ns"}}',
        evidence={"alertname": "FillProbCircuitBreakerTripped", "labels": {"namespace": "ns", "fillprob_rollout": "r"},
                  "annotations": {"summary": "é \"quoted\""}, "startsAt": starts_at, "fingerprint": fingerprint},
        key=f"alert:{fingerprint}:{starts_at}",
    )


def test_an_alert_is_stored_as_one_annotation_named_after_its_key():
    request = alert_request()
    name = alert_annotation_name(request.key)
    assert name == "alert.grinder.io/" + __import__("hashlib").sha256(request.key.encode()).hexdigest()[:32]
    assert len(name.split("/")[1]) == 32 and is_alert_annotation(name) and not is_alert_annotation("grinder.io/rollback")
    value = encode_rollback_request(request)
    assert ": " not in value and ", " not in value.replace('", "', "")  # compact
    assert value == encode_rollback_request(alert_request())  # a re-send writes the same bytes
    assert decode_rollback_request(name, value) == request


HOSTILE = {
    "not json": "{nope",
    "not an object": "[1, 2]",
    "deeply nested": "[" * 100000 + "]" * 100000,
    "a manual rollback in disguise": {"reason": "ManualRollback"},
    "a playbook of its own": {"playbook": "R9"},
    "a playbook that is no string": {"playbook": None},
    "a key that is no alert": {"key": "annotation/uid/R1/t"},
    "evidence nested deeper than the receiver writes": {"evidence": {"labels": {"a": {"b": "c"}}}},
    "evidence that is a list": {"evidence": ["x"]},
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_an_alert_annotation_that_does_not_read_back_is_a_value_error(case):
    request = alert_request()
    name = alert_annotation_name(request.key)
    bad = HOSTILE[case]
    if isinstance(bad, dict):
        bad = json.dumps({**json.loads(encode_rollback_request(request)), **bad})
    with pytest.raises(ValueError):
        decode_rollback_request(name, bad)


def test_an_alert_annotation_under_another_keys_name_is_refused():
    request, other = alert_request("fp1"), alert_request("fp2")
    with pytest.raises(ValueError, match="named after"):
        decode_rollback_request(alert_annotation_name(other.key), encode_rollback_request(request))


def test_stored_alerts_are_taken_oldest_first_bounded_and_unreadable_ones_reported():
    requests = [alert_request(f"fp{i:03}", f"2026-01-02T03:{i // 60:02}:{i % 60:02}Z") for i in range(ALERTS_PER_TICK + 7)]
    annotations = {alert_annotation_name(r.key): encode_rollback_request(r) for r in reversed(requests)}
    annotations["alert.grinder.io/junk"] = "{}"
    annotations["grinder.io/rollback"] = "R1"  # not an alert: the manual request reads it
    alerts = alert_requests_from_annotations(rollout(annotations))
    assert alerts.requests == tuple(requests[:ALERTS_PER_TICK])
    assert alerts.waiting == 7
    assert [name for name, _ in alerts.unreadable] == ["alert.grinder.io/junk"]
    assert alert_requests_from_annotations(rollout({})).requests == ()
    assert alert_requests_from_annotations({"metadata": {}}).unreadable == ()


def test_taken_request_keys_are_in_history_or_in_request_keys():
    status = {"history": [{"evidence": {"requestKey": "alert:a:t"}}, {"evidence": {}}, {}],
              "requestKeys": ["alert:b:t"]}
    assert taken_request_keys(status) == {"alert:a:t", "alert:b:t"}
    assert taken_request_keys({}) == set()


def test_kv_log_lines():
    assert kv("transition", name="r", phase="Canary", step="Expand 2/3", env_patched=True, n=None, ev={"a": 1}) == (
        'event=transition name=r phase=Canary step="Expand 2/3" env_patched=true ev={"a":1}'
    )


@pytest.mark.parametrize("value, seconds", [(None, 30.0), ("10s", 10.0), ("1m30s", 90.0), ("250ms", 1.0), ("bad", 30.0),
                                            ("", 30.0), (5, 30.0), (["10s"], 30.0), ({"s": 10}, 30.0)])
def test_evaluation_interval(value, seconds):
    """Any value an invalid spec can hold: a string is parsed once and remembered, anything else
    (unhashable too) is the default, never an error."""
    spec = {"prometheus": {"interval": value}} if value is not None else {}
    assert evaluation_interval(spec) == seconds
    assert evaluation_interval(spec) == seconds


def test_a_rollouts_selector_is_remembered_by_its_strings_and_an_invalid_one_raises_each_time():
    spec = {"deploymentName": "grinder", "prometheus": {"selector": 'job="grinder"'}}
    assert rollout_selector(spec, "a") is rollout_selector(dict(spec), "a")
    assert rollout_selector({"deploymentName": "grinder"}, "a") == default_selector("a", "grinder")
    assert rollout_selector({"deploymentName": "grinder"}, "b") == default_selector("b", "grinder")
    assert rollout_selector({"deploymentName": "g2"}, "a") == default_selector("a", "g2")
    for _ in range(2):
        with pytest.raises(SelectorError):
            rollout_selector({"deploymentName": "g", "prometheus": {"selector": 'job=="x'}}, "a")


def test_settings_from_env():
    config = Settings.from_env({
        "PROMETHEUS_URL": "http://127.0.0.1:19090/", "FILLPROB_NAMESPACES": "a, b,",
        "FILLPROB_METRICS_ADDR": "127.0.0.1:0", "FILLPROB_PROMETHEUS_LOOKBACK": "2m",
    })
    assert config.prometheus_url == "http://127.0.0.1:19090"
    assert config.namespaces == ("a", "b")
    assert config.metrics_host_port == ("127.0.0.1", 0)
    assert config.prometheus_lookback == "2m"
    assert config.peering == "standalone"
    assert Settings.from_env({"FILLPROB_PROMETHEUS_URL": "http://p:9090", "PROMETHEUS_URL": "x"}).prometheus_url == "http://p:9090"
    assert Settings.from_env({"FILLPROB_METRICS_ADDR": "off"}).metrics_host_port is None
    with pytest.raises(ValueError, match="LOOKBACK"):
        Settings.from_env({"FILLPROB_PROMETHEUS_LOOKBACK": "1 minute"})


@pytest.mark.parametrize("text, arenas", [(None, 2), ("0", 0), (" 4 ", 4), ("64", 64)])
def test_malloc_arenas_from_env(text, arenas):
    assert Settings.from_env({} if text is None else {"FILLPROB_MALLOC_ARENAS": text}).malloc_arenas == arenas


@pytest.mark.parametrize("text", ["-1", "two", "65", "1.5", ""])
def test_malloc_arenas_refused_says_what_it_wants(text):
    with pytest.raises(ValueError, match=r"FILLPROB_MALLOC_ARENAS=.*want a whole number from 0 \(glibc's default\) to 64"):
        Settings.from_env({"FILLPROB_MALLOC_ARENAS": text})


class RecordingKube:
    def __init__(self, patch_applies=True):
        self.calls = []
        self.patch_applies = patch_applies

    async def patch_env(self, ns, name, action):
        self.calls.append(("patch_env", name, action.restart_token))
        return self.patch_applies

    async def emit_event(self, owner, event):
        self.calls.append(("event", event.reason))

    async def clear_rollback_annotation(self, ns, name, expected, *, with_reason=False):
        self.calls.append(("clear", expected, with_reason))
        return True

    async def patch_rollout_status(self, ns, name, patch):
        self.calls.append(("status", patch))
        return {}


class Decision:
    def __init__(self, status, actions, changed=True):
        self.status, self.actions, self.changed = status, actions, changed


class Clock:
    def now(self):
        return NOW

    def monotonic(self):
        return 0.0


def context(previous, sampled_at=None):
    pods = {"g-1-a": PodMetrics(pod="g-1-a", sampled_at=sampled_at)} if sampled_at else {}
    observations = Observations(
        deployment=DeploymentObservation(exists=True),
        metrics=MetricsObservation(available=bool(pods), pods=pods),
    )
    return ExecutionContext(namespace="ns", name="r", body={"metadata": {"name": "r"}}, deployment_name="g",
                            previous_status=previous, observations=observations,
                            rollback_annotation="R1", rollback_reason_annotation=True)


def test_executor_writes_status_once_then_runs_actions_in_order_and_times_detection():
    kube = RecordingKube()
    metrics = OperatorMetrics()
    previous = {"phase": "Canary", "state": "Observing"}
    new = {"phase": "Canary", "state": "RolledBack",
           "lastRollback": {"playbook": "R1", "reason": "CircuitBreakerTripped", "at": "2024-05-01T12:00:00Z"}}
    decision = Decision(new, (PatchEnv(container="g", set_env={"GRINDER_FILL_MODEL_ENFORCE": "0"}, restart_token="t"),
                              EmitEvent("Warning", "CircuitBreakerTripped", "R1"), ClearRollbackAnnotation()))
    sampled = datetime(2024, 5, 1, 11, 59, 48, tzinfo=timezone.utc)
    result = asyncio.run(Executor(kube, metrics, Clock()).execute(context(previous, sampled), decision))
    assert kube.calls == [
        ("status", {"state": "RolledBack", "lastRollback": new["lastRollback"]}),  # the intent first
        ("patch_env", "g", "t"), ("event", "CircuitBreakerTripped"), ("clear", "R1", True),
    ]
    assert result.status_patched and result.env_patched_at == NOW
    assert metrics.registry.get_sample_value(
        "fillprob_rollout_rollbacks_total",
        {"namespace": "ns", "name": "r", "playbook": "R1", "reason": "CircuitBreakerTripped"}) == 1
    assert metrics.registry.get_sample_value("fillprob_rollout_detection_seconds_sum") == 12.0

    # same status again (unchanged): no patch, no second count
    kube.calls.clear()
    asyncio.run(Executor(kube, metrics, Clock()).execute(context(new, sampled), Decision(new, (), changed=False)))
    assert kube.calls == []
    assert metrics.registry.get_sample_value(
        "fillprob_rollout_rollbacks_total",
        {"namespace": "ns", "name": "r", "playbook": "R1", "reason": "CircuitBreakerTripped"}) == 1


def test_manual_rollback_is_counted_but_not_timed():
    kube = RecordingKube()
    metrics = OperatorMetrics()
    new = {"state": "RolledBack", "lastRollback": {"playbook": "R3", "reason": "ManualRollback"}}
    decision = Decision(new, (PatchEnv(container="g", restart_token="t"),))
    asyncio.run(Executor(kube, metrics, Clock()).execute(context({}, NOW), decision))
    assert metrics.registry.get_sample_value("fillprob_rollout_detection_seconds_count") == 0
    assert metrics.registry.get_sample_value(
        "fillprob_rollout_rollbacks_total",
        {"namespace": "ns", "name": "r", "playbook": "R3", "reason": "ManualRollback"}) == 1


def test_info_metric_keeps_one_series_per_rollout():
    metrics = OperatorMetrics()
    metrics.set_info("ns", "r", "Shadow", "Observing")
    metrics.set_info("ns", "r", "Canary", "Restarting")
    get = metrics.registry.get_sample_value
    assert get("fillprob_rollout_info", {"namespace": "ns", "name": "r", "phase": "Shadow", "state": "Observing"}) is None
    assert get("fillprob_rollout_info", {"namespace": "ns", "name": "r", "phase": "Canary", "state": "Restarting"}) == 1
    metrics.forget("ns", "r")
    assert get("fillprob_rollout_info", {"namespace": "ns", "name": "r", "phase": "Canary", "state": "Restarting"}) is None


def test_evaluation_metrics_keep_one_condition_series_and_are_forgotten():
    """What the operator's own alerts read (docs/kube-prometheus-stack.md)."""
    metrics = OperatorMetrics()
    get = metrics.registry.get_sample_value
    metrics.set_evaluated("ns", "r", 1000.0, 2.0, {"MetricsAvailable": "True", "Ready": "False"})
    metrics.set_evaluated("ns", "r", 1002.0, 2.0, {"MetricsAvailable": "False", "Ready": "False"})
    labels = {"namespace": "ns", "name": "r"}
    assert get("fillprob_rollout_condition", {**labels, "type": "MetricsAvailable", "status": "True"}) is None
    assert get("fillprob_rollout_condition", {**labels, "type": "MetricsAvailable", "status": "False"}) == 1
    assert get("fillprob_rollout_last_evaluation_timestamp_seconds", labels) == 1002.0
    assert get("fillprob_rollout_evaluation_interval_seconds", labels) == 2.0
    metrics.forget("ns", "r")
    assert get("fillprob_rollout_condition", {**labels, "type": "Ready", "status": "False"}) is None
    assert get("fillprob_rollout_last_evaluation_timestamp_seconds", labels) is None



def test_evaluation_metrics_follow_the_interval_and_come_back_after_being_forgotten():
    """The children kept per rollout (metrics.py) never hide a change or a forget."""
    metrics = OperatorMetrics()
    get = metrics.registry.get_sample_value
    labels = {"namespace": "ns", "name": "r"}
    metrics.set_evaluated("ns", "r", 1000.0, 2.0, {})
    metrics.set_evaluated("ns", "r", 1030.0, 30.0, {})
    assert get("fillprob_rollout_evaluation_interval_seconds", labels) == 30.0
    metrics.forget("ns", "r")
    metrics.set_evaluated("ns", "r", 1060.0, 30.0, {})
    assert get("fillprob_rollout_last_evaluation_timestamp_seconds", labels) == 1060.0
    assert get("fillprob_rollout_evaluation_interval_seconds", labels) == 30.0
    for result in ("go", "go", "nodata"):
        metrics.count_gate(result)
    assert get("fillprob_rollout_gate_evaluations_total", {"result": "go"}) == 2
    assert get("fillprob_rollout_gate_evaluations_total", {"result": "nodata"}) == 1

def test_gone_pods_are_dropped_and_sampled_at_is_the_scrape_time():
    live = {"namespace": "ns", "pod": "g-2-new"}
    gone = {"namespace": "ns", "pod": "g-1-old"}
    results = {
        "scraped_at": parse_result([{"metric": live, "value": [200.0, "198.5"]}]),
        "enforce_enabled": parse_result([{"metric": live, "value": [200.0, "1"]}]),
        # an old ReplicaSet's pod: no `up` any more, but increase() still covers it
        "recent_blocks_by_symbol": parse_result([
            {"metric": {**gone, "symbol": "SYM1"}, "value": [200.0, "40"]},
            {"metric": {**live, "symbol": "SYM1"}, "value": [200.0, "3"]},
        ]),
    }
    pods = split_by_pod(results, lambda labels: True)
    assert list(pods) == ["g-2-new"]
    assert pods["g-2-new"].sampled_at == datetime.fromtimestamp(198.5, tz=timezone.utc)
    assert dict(pods["g-2-new"].recent_blocks_by_symbol) == {"SYM1": 3.0}
