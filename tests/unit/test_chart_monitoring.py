"""The chart's Prometheus Operator objects on a kube-prometheus-stack cluster: ServiceMonitor
(the operator), PodMonitor (grinder, with `fillprob_rollout` via podTargetLabels) and
PrometheusRule (the grinder rules file plus the operator's own alerts).

kube-prometheus-stack's Prometheus, with its default values, selects only objects labelled
`release: <its Helm release name>` (prometheusSpec.{serviceMonitor,podMonitor,rule}Selector
empty and *SelectorNilUsesHelmValues: true -> `matchLabels: {release: <release>}` in
templates/prometheus/prometheus.yaml), in every namespace (the *NamespaceSelector values are
`{}`). The chart's objects are rendered and matched against exactly those selectors.

The rules are tested with `promtool test rules` (tests/fixtures/prometheus-rules/) on the
groups helm renders. Needs helm and promtool (.testbed/cache/bin, built by `make
testbed-build`); without them these tests FAIL. The objects are checked against
prometheus-operator's CRDs on the testbed's API server in tests/e2e/test_kube_prometheus_stack.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart import CHART, NAMESPACE, RELEASE, REPO, helm, kinds, one, render
from test_dashboard import find_promtool

RULES_TEST = REPO / "tests" / "fixtures" / "prometheus-rules" / "chart-rules.test.yml"
GRINDER_EXAMPLE = REPO / "examples" / "grinder-deployment.yaml"
ROLLOUT_EXAMPLE = REPO / "examples" / "fillprobrollout.yaml"
RECEIVER_EXAMPLE = REPO / "examples" / "alertmanager-receiver.yaml"
OPERATOR_METRICS = REPO / "operator" / "fillprob_operator" / "metrics.py"

# kube-prometheus-stack's default Prometheus selectors for a release named kube-prometheus-stack
# (the chart README's `helm install kube-prometheus-stack prometheus-community/kube-prometheus-stack`).
KPS_RELEASE = "kube-prometheus-stack"
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
ALL_ON = ("--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true",
          "--set", "prometheusRule.enabled=true")
OPERATOR_ALERTS = {"FillProbOperatorDown", "FillProbRolloutHaltedOrRolledBack",
                   "FillProbRolloutMetricsUnavailable", "FillProbRolloutNotEvaluated"}


def kps_selector(release: str = KPS_RELEASE) -> dict[str, Any]:
    return {"matchLabels": {"release": release}}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions) against a label set."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def operator_group(docs: list[dict[str, Any]]) -> dict[str, Any]:
    rule = one(docs, "PrometheusRule")
    [group] = [g for g in rule["spec"]["groups"] if g["name"] == "fillprob-operator"]
    return group


@pytest.fixture(scope="module")
def monitoring_docs() -> list[dict[str, Any]]:
    return render(*ALL_ON)


# ------------------------------------------------------------ kube-prometheus-stack selectors


def test_kube_prometheus_stack_default_selectors_pick_up_every_object(monitoring_docs):
    for kind in MONITORING_KINDS:
        obj = one(monitoring_docs, kind)
        assert selects(kps_selector(), obj["metadata"]["labels"]), (
            f"{kind} {obj['metadata']['name']} labels {obj['metadata']['labels']} are ignored by "
            f"kube-prometheus-stack's default {kind} selector {kps_selector()}"
        )


def test_release_label_follows_values():
    docs = render(*ALL_ON, "--set", "serviceMonitor.labels.release=monitoring",
                  "--set", "podMonitor.labels.release=monitoring",
                  "--set", "prometheusRule.labels.release=monitoring")
    for kind in MONITORING_KINDS:
        labels = one(docs, kind)["metadata"]["labels"]
        assert selects(kps_selector("monitoring"), labels) and not selects(kps_selector(), labels), labels
    # A Prometheus selecting on something else: drop the default, add its label.
    docs = render(*ALL_ON, "--set", "serviceMonitor.labels.release=null",
                  "--set", "serviceMonitor.labels.prometheus=main")
    labels = one(docs, "ServiceMonitor")["metadata"]["labels"]
    assert "release" not in labels and labels["prometheus"] == "main"


def test_nothing_is_rendered_unless_enabled(default_docs):
    for kind in MONITORING_KINDS:
        assert kinds(default_docs, kind) == []


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


# ------------------------------------------------------------------------- ServiceMonitor


def test_service_monitor_scrapes_the_operator_service_and_keeps_the_rollout_namespace(monitoring_docs):
    monitor = one(monitoring_docs, "ServiceMonitor")
    service = one(monitoring_docs, "Service")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # fillprob_rollout_info{namespace} is the rollout's namespace: without honorLabels Prometheus
    # would rename it exported_namespace and put the operator's namespace in its place.
    assert endpoint["honorLabels"] is True


# ----------------------------------------------------------------------------- PodMonitor


def test_pod_monitor_selects_the_example_grinder_pods_and_copies_fillprob_rollout(monitoring_docs):
    monitor = one(monitoring_docs, "PodMonitor")
    grinder = yaml.safe_load(GRINDER_EXAMPLE.read_text())
    pod_labels = grinder["spec"]["template"]["metadata"]["labels"]
    container = grinder["spec"]["template"]["spec"]["containers"][0]
    assert selects(monitor["spec"]["selector"], pod_labels), (monitor["spec"]["selector"], pod_labels)
    assert not selects(monitor["spec"]["selector"], {"app": "grinder"}), "a pod without fillprob_rollout selected"
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container["ports"]}
    assert endpoint["path"] == "/metrics"
    assert "fillprob_rollout" in monitor["spec"]["podTargetLabels"]
    # The label's value names the FillProbRollout (examples/fillprobrollout.yaml).
    rollout = yaml.safe_load(ROLLOUT_EXAMPLE.read_text())
    assert pod_labels["fillprob_rollout"] == rollout["metadata"]["name"]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}  # cluster scope: every namespace


def test_pod_monitor_namespaces_follow_the_watched_ones():
    docs = render("--set", "podMonitor.enabled=true", "--set", "rbac.scope=namespaced",
                  "--set", "watchNamespaces={trading,trading-canary}")
    assert one(docs, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["trading", "trading-canary"]}
    docs = render("--set", "podMonitor.enabled=true", "--set", "podMonitor.namespaceSelector.matchNames={grinders}")
    assert one(docs, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["grinders"]}


def test_pod_monitor_refuses_to_drop_fillprob_rollout():
    proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "podMonitor.enabled=true",
                "--set", "podMonitor.podTargetLabels={app}", check=False)
    assert proc.returncode != 0 and "must include fillprob_rollout" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------- PrometheusRule


def test_rules_pass_promtool_test_rules(monitoring_docs, tmp_path: Path):
    """Render the groups as kube-prometheus-stack gets them, then `promtool test rules`."""
    promtool = find_promtool()
    groups = one(monitoring_docs, "PrometheusRule")["spec"]["groups"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    (tmp_path / RULES_TEST.name).write_text(RULES_TEST.read_text())
    check = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    done = subprocess.run([promtool, "test", "rules", RULES_TEST.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"promtool test rules failed:\n{done.stdout}\n{done.stderr}"
    # Every alert of the PrometheusRule has a unit test.
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert alerts - tested == set(), f"alerts without a promtool test: {sorted(alerts - tested)}"


def test_operator_alerts_are_the_four_and_follow_values(monitoring_docs):
    group = operator_group(monitoring_docs)
    assert {r["alert"] for r in group["rules"]} == OPERATOR_ALERTS
    by = {r["alert"]: r for r in group["rules"]}
    assert by["FillProbOperatorDown"]["expr"] == f'absent(up{{job="{RELEASE}-fillprob-operator",namespace="{NAMESPACE}"}} == 1)'
    assert [by[a]["for"] for a in sorted(OPERATOR_ALERTS)] == ["5m", "15m", "10m", "1m"]

    docs = render("--set", "prometheusRule.enabled=true",
                  "--set", "prometheusRule.operatorAlerts.downFor=2m",
                  "--set", "prometheusRule.operatorAlerts.haltedFor=1h",
                  "--set", "prometheusRule.operatorAlerts.metricsUnavailableFor=30m",
                  "--set", "prometheusRule.operatorAlerts.notEvaluatedIntervals=5",
                  "--set", "prometheusRule.operatorAlerts.notEvaluatedFor=0s",
                  "--set", "prometheusRule.operatorAlerts.labels.team=trading",
                  "--set", 'prometheusRule.operatorAlerts.upSelector=job="kubernetes-pods"\\,app_kubernetes_io_instance="fpo"')
    by = {r["alert"]: r for r in operator_group(docs)["rules"]}
    assert [by[a]["for"] for a in sorted(OPERATOR_ALERTS)] == ["2m", "1h", "30m", "0s"]
    assert "5 * max by (namespace, name) (fillprob_rollout_evaluation_interval_seconds)" in by["FillProbRolloutNotEvaluated"]["expr"]
    assert by["FillProbOperatorDown"]["expr"] == 'absent(up{job="kubernetes-pods",app_kubernetes_io_instance="fpo"} == 1)'
    assert all(r["labels"]["team"] == "trading" for r in by.values())

    docs = render("--set", "prometheusRule.enabled=true", "--set", "prometheusRule.operatorAlerts.enabled=false")
    assert [g["name"] for g in one(docs, "PrometheusRule")["spec"]["groups"]] == ["fillprob-rollout"]


def test_operator_alerts_never_reach_the_rollback_receiver(monitoring_docs):
    """The receiver route matches fillprob_rollout=~".+": an operator alert must never carry it
    (a Halted alert would otherwise roll the rollout back again)."""
    receiver = yaml.safe_load(RECEIVER_EXAMPLE.read_text())
    route = next(r for r in receiver["route"]["routes"] if r["receiver"] == "fillprob-operator")
    assert 'fillprob_rollout=~".+"' in route["matchers"]
    for rule in operator_group(monitoring_docs)["rules"]:
        assert "fillprob_rollout" not in rule["labels"] and "rollback" not in rule["labels"]
        # Output labels come from `by (...)` / absent(): none is fillprob_rollout.
        for by in re.findall(r"by \(([^)]*)\)", rule["expr"]):
            assert "fillprob_rollout" not in by, rule["expr"]
    proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "prometheusRule.enabled=true",
                "--set", "prometheusRule.operatorAlerts.labels.fillprob_rollout=x", check=False)
    assert proc.returncode != 0 and "must not set fillprob_rollout" in proc.stderr, proc.stderr


def test_operator_alerts_name_only_metrics_the_operator_exports(monitoring_docs):
    exported = set(re.findall(r"\b(?:Gauge|Counter|Histogram|Summary|Info|Enum)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"",
                              OPERATOR_METRICS.read_text()))
    assert exported, f"no metric constructors in {OPERATOR_METRICS}"
    used = {
        name
        for rule in operator_group(monitoring_docs)["rules"]
        for name in re.findall(r"\b(fillprob_rollout_[a-z_]+)\b", rule["expr"])
    }
    missing = sorted(used - exported)
    assert not missing, f"the operator's alerts read metrics operator/fillprob_operator/metrics.py does not export: {missing}"
