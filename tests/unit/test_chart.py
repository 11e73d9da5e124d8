"""The Helm chart (charts/fillprob-operator): lint, render, least-privilege RBAC, pod hardening.

Needs helm: `make testbed-build` builds it into .testbed/cache/bin/helm (version pinned in
testbed/cluster/go.mod); $HELM or a `helm` on PATH also do. Without helm these tests FAIL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fillprob-operator"
NAMESPACED_VALUES = CHART / "ci" / "namespaced-values.yaml"
RULES_FILE = CHART / "files" / "prometheus-rules.yml"
RELEASE, NAMESPACE = "fpo", "fillprob-system"

# What the operator and kopf call, no more (API group, resource, verb).
NAMESPACED_RULES = {
    *(("grinder.io", "fillprobrollouts", v) for v in ("get", "list", "watch", "patch")),
    ("grinder.io", "fillprobrollouts/status", "patch"),
    *(("apps", "deployments", v) for v in ("get", "list", "watch", "patch")),
    *(("apps", "replicasets", v) for v in ("list", "watch")),
    *(("", "pods", v) for v in ("list", "watch")),
    ("", "pods/log", "get"),
    *(("batch", "jobs", v) for v in ("get", "list", "watch", "create")),
    ("", "events", "create"),
}
CRD_DISCOVERY = {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
NAMESPACE_DISCOVERY = {("", "namespaces", v) for v in ("list", "watch")}
CLUSTER_PEERING = {("kopf.dev", "clusterkopfpeerings", v) for v in ("get", "list", "watch", "patch")}
NAMESPACED_PEERING = {("kopf.dev", "kopfpeerings", v) for v in ("get", "list", "watch", "patch")}


# ---------------------------------------------------------------------------- helm


def helm_binary() -> str:
    for candidate in (os.environ.get("HELM"), str(REPO / ".testbed" / "cache" / "bin" / "helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "helm not found: run `make testbed-build` (builds .testbed/cache/bin/helm from testbed/cluster), "
        "or set HELM=/path/to/helm",
        pytrace=False,
    )


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    home = REPO / ".testbed" / "cache" / "helm-home"  # keep helm out of ~/.config, ~/.cache
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    env.pop("KUBECONFIG", None)
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}", pytrace=False)
    return proc


def render(*values: str) -> list[dict[str, Any]]:
    proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *values)
    assert proc.stderr.strip() == "", proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kinds(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = kinds(docs, kind)
    assert len(found) == 1, f"want one {kind}, found {len(found)}"
    return found[0]


def rule_tuples(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule["verbs"]
    }


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def namespaced_docs() -> list[dict[str, Any]]:
    return render("-f", str(NAMESPACED_VALUES))


# ---------------------------------------------------------------------------- lint


@pytest.mark.parametrize("values", [[], ["-f", str(NAMESPACED_VALUES)]], ids=["default", "namespaced"])
def test_helm_lint_is_clean(values: list[str]):
    proc = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *values)
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_values_outside_the_schema_fail():
    proc = helm("template", RELEASE, str(CHART), "--set", "rbac.scope=everywhere", check=False)
    assert proc.returncode != 0 and "scope" in proc.stderr
    proc = helm("template", RELEASE, str(CHART), "--set", "replica=2", check=False)  # a typo
    assert proc.returncode != 0 and "replica" in proc.stderr


def test_namespaced_scope_needs_namespaces_and_cluster_scope_refuses_them():
    proc = helm("template", RELEASE, str(CHART), "--set", "rbac.scope=namespaced", check=False)
    assert proc.returncode != 0 and "needs watchNamespaces" in proc.stderr
    proc = helm("template", RELEASE, str(CHART), "--set", "watchNamespaces={a}", check=False)
    assert proc.returncode != 0 and "rbac.scope=namespaced" in proc.stderr


# ---------------------------------------------------------------------------- RBAC


def test_no_wildcards_and_no_secrets_anywhere(default_docs, namespaced_docs):
    for docs in (default_docs, namespaced_docs, render("--set", "replicas=3")):
        roles = kinds(docs, "ClusterRole") + kinds(docs, "Role")
        assert roles
        for role in roles:
            for rule in role["rules"]:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
                assert "secrets" not in rule.get("resources", []), rule
                assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_cluster_scope_grants_exactly_what_is_used(default_docs):
    role = one(default_docs, "ClusterRole")
    assert rule_tuples(role) == NAMESPACED_RULES | CRD_DISCOVERY
    assert kinds(default_docs, "Role") == [] and kinds(default_docs, "RoleBinding") == []
    binding = one(default_docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": one(default_docs, "ServiceAccount")["metadata"]["name"], "namespace": NAMESPACE}
    ]


def test_namespaced_scope_has_a_role_per_watched_namespace(namespaced_docs):
    watched = yaml.safe_load(NAMESPACED_VALUES.read_text())["watchNamespaces"]
    roles = kinds(namespaced_docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    for role in roles:  # ci values run two replicas: peering on
        assert rule_tuples(role) == NAMESPACED_RULES | NAMESPACED_PEERING
    bindings = kinds(namespaced_docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)
    # Cluster-wide only the reads kopf needs to find CRDs and namespaces.
    assert rule_tuples(one(namespaced_docs, "ClusterRole")) == CRD_DISCOVERY | NAMESPACE_DISCOVERY
    container = one(namespaced_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["FILLPROB_NAMESPACES"] == ",".join(watched)


def test_peering_follows_replicas(default_docs):
    assert kinds(default_docs, "ClusterKopfPeering") == []
    deployment = one(default_docs, "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two active operators
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["FILLPROB_PEERING"] == "standalone"

    docs = render("--set", "replicas=2")
    peering = one(docs, "ClusterKopfPeering")
    assert rule_tuples(one(docs, "ClusterRole")) == NAMESPACED_RULES | CRD_DISCOVERY | CLUSTER_PEERING
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["FILLPROB_PEERING"] == peering["metadata"]["name"]
    assert env_of(container)["FILLPROB_PEERING_LIFETIME"] == "30"
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "FILLPROB_PEERING_LIFETIME" not in env_of(
        one(default_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])


# ---------------------------------------------------------------------------- the operator pod


def test_operator_pod_is_hardened(default_docs, namespaced_docs):
    for docs in (default_docs, namespaced_docs):
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        [container] = pod["containers"]
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert set(container["resources"]) == {"requests", "limits"}
        # The image's own ENTRYPOINT (python -m fillprob_operator) runs; tag = the appVersion.
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        assert container["image"] == f"fillprob-operator:{app_version}"
        assert "command" not in container


def test_operator_env_probes_and_ports(default_docs):
    deployment = one(default_docs, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert "POD_IP" not in env  # listeners bind 0.0.0.0 (port-forward connects to the pod's loopback)
    assert env["FILLPROB_METRICS_ADDR"] == "0.0.0.0:8080"
    assert env["FILLPROB_WEBHOOK_ADDR"] == "0.0.0.0:8082"
    assert env["FILLPROB_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8081/healthz"
    assert env["FILLPROB_PROMETHEUS_URL"].startswith("http")
    assert env["FILLPROB_NAMESPACES"] == ""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "probes": 8081, "webhook": 8082}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    # Ready = this replica can store an alert now (the receiver's /readyz).
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "webhook"}
    [without] = one(render("--set", "webhook.enabled=false"), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert without["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    service = one(default_docs, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"metrics": 8080, "webhook": 8082}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_webhook_token_is_a_mounted_secret_by_default(default_docs):
    pod = one(default_docs, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    secret = one(default_docs, "Secret")
    token_file = env_of(container)["FILLPROB_WEBHOOK_TOKEN_FILE"]
    volume = next(v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True and token_file == f"{mount['mountPath']}/token"
    assert len(secret["data"]["token"]) >= 48


def test_webhook_token_from_env_and_webhook_off(namespaced_docs):
    pod = one(namespaced_docs, "Deployment")["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["FILLPROB_WEBHOOK_TOKEN"] == {"secretKeyRef": {"name": "fpo-fillprob-operator-webhook", "key": "token"}}
    assert "FILLPROB_WEBHOOK_TOKEN_FILE" not in env
    assert not any("secret" in v for v in pod["volumes"])

    docs = render("--set", "webhook.enabled=false")
    assert kinds(docs, "Secret") == []
    env = env_of(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert env["FILLPROB_WEBHOOK_ADDR"] == "off"


# ---------------------------------------------------------------------------- CRDs, rules, examples


def test_chart_crd_is_the_canonical_crd_byte_for_byte():
    canonical = sorted((REPO / "crds").glob("*.yaml"))
    assert canonical
    for path in canonical:
        copy = CHART / "crds" / path.name
        assert copy.exists(), f"{copy} missing: run make chart-crds"
        assert copy.read_bytes() == path.read_bytes(), f"{copy} differs from {path}: run make chart-crds"
    proc = subprocess.run([str(REPO / "scripts" / "sync-chart-crds.sh"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_chart_crds_are_only_ours_and_kopfs():
    names = set()
    for path in (CHART / "crds").glob("*.yaml"):
        names |= {d["metadata"]["name"] for d in yaml.safe_load_all(path.read_text()) if d}
    assert names == {"fillprobrollouts.grinder.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}



# The CRD chart (charts/fillprob-operator-crds): how `helm upgrade` upgrades the CRD (docs/install.md
# "Upgrading"; tests/e2e/test_crd_upgrade.py upgrades the previous CRD with it on a live cluster).
CRD_CHART = REPO / "charts" / "fillprob-operator-crds"
CANONICAL_CRD = REPO / "crds" / "fillprobrollouts.grinder.io.yaml"
PREVIOUS_CRD = REPO / "tests" / "fixtures" / "previous-crd" / "fillprobrollouts.grinder.io@9553c41.yaml"


def test_crd_chart_lint_is_clean():
    proc = helm("lint", "--strict", str(CRD_CHART))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_crd_chart_file_is_the_canonical_crd_byte_for_byte():
    copy = CRD_CHART / "files" / CANONICAL_CRD.name
    assert copy.read_bytes() == CANONICAL_CRD.read_bytes(), f"{copy} differs from {CANONICAL_CRD}: run make chart-crds"
    assert sorted(p.name for p in (CRD_CHART / "files").iterdir()) == [CANONICAL_CRD.name]


def test_crd_chart_renders_the_canonical_crd_kept_on_uninstall():
    """Exactly the canonical CRD, plus the keep policy (uninstall never deletes the CRD, and so
    never the rollouts) and labels; nothing else in the chart, and no values change that."""
    proc = helm("template", "fpo-crds", str(CRD_CHART), "--namespace", NAMESPACE)
    assert proc.stderr.strip() == "", proc.stderr
    [crd] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    expected = yaml.safe_load(CANONICAL_CRD.read_text())
    metadata = crd["metadata"]
    assert metadata.pop("annotations") == {"helm.sh/resource-policy": "keep"}
    chart = yaml.safe_load((CRD_CHART / "Chart.yaml").read_text())
    assert metadata.pop("labels") == {
        "app.kubernetes.io/name": "fillprob-operator-crds",
        "app.kubernetes.io/part-of": "fillprob-operator",
        "app.kubernetes.io/version": chart["appVersion"],
        "helm.sh/chart": f"fillprob-operator-crds-{chart['version']}",
    }
    assert crd == expected
    main = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (main["version"], main["appVersion"]), (
        "release the CRD chart with the operator chart: same version and appVersion"
    )


def test_previous_crd_fixture_is_older_than_the_canonical_crd():
    """tests/e2e/test_crd_upgrade.py upgrades from this CRD (git show 9553c41:crds/...): it must be
    the same resource, and the upgrade must bring something it lacks (the RE2 regex rule)."""
    previous, current = yaml.safe_load(PREVIOUS_CRD.read_text()), yaml.safe_load(CANONICAL_CRD.read_text())
    assert previous["metadata"]["name"] == current["metadata"]["name"]
    assert "valid RE2 regular expression" not in PREVIOUS_CRD.read_text()
    assert "valid RE2 regular expression" in CANONICAL_CRD.read_text()

def test_prometheus_rule_is_the_rules_file(default_docs, namespaced_docs):
    assert kinds(default_docs, "PrometheusRule") == [] and kinds(default_docs, "ServiceMonitor") == []
    rule = one(namespaced_docs, "PrometheusRule")
    # The rules file as is, then the operator's own alerts (tests/unit/test_chart_monitoring.py).
    file_groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    assert rule["spec"]["groups"][: len(file_groups)] == file_groups
    assert [g["name"] for g in rule["spec"]["groups"][len(file_groups):]] == ["fillprob-operator"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    monitor = one(namespaced_docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_rules_alert_with_the_labels_the_receiver_reads():
    rules = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == {"FillProbCircuitBreakerTripped", "FillProbSymbolAllOrdersBlocked"}
    for rule in rules:
        # The alert keeps `namespace` and `fillprob_rollout` (the receiver needs both).
        assert "by (namespace, fillprob_rollout" in rule["expr"]
        assert rule["labels"].get("rollback", "R1") in ("R1", "R2", "R3")
    cb = next(r for r in rules if r["alert"] == "FillProbCircuitBreakerTripped")
    assert "increase(grinder_router_fill_prob_cb_trips_total" in cb["expr"] and "> 0" in cb["expr"]
    blocked = next(r for r in rules if r["alert"] == "FillProbSymbolAllOrdersBlocked")
    assert ">= 0.99" in blocked["expr"] and ">= 20" in blocked["expr"]


def test_alertmanager_receiver_example_points_at_the_webhook():
    config = yaml.safe_load((REPO / "examples" / "alertmanager-receiver.yaml").read_text())
    receiver = next(r for r in config["receivers"] if r["name"] == "fillprob-operator")
    [hook] = receiver["webhook_configs"]
    assert hook["url"].endswith(":8082/alertmanager")
    assert hook["http_config"]["authorization"]["type"] == "Bearer"
    assert hook["http_config"]["authorization"]["credentials_file"]
    route = next(r for r in config["route"]["routes"] if r["receiver"] == "fillprob-operator")
    assert 'fillprob_rollout=~".+"' in route["matchers"]
