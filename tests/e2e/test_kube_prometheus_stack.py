"""The chart's ServiceMonitor, PodMonitor and PrometheusRule against prometheus-operator's own
CRDs, on the testbed's API server: what kube-prometheus-stack's Prometheus would be given.

The CRDs come from the prometheus-operator Go module, pinned below (`go mod download -json`,
then `example/prometheus-operator-crd/` from the module cache): no third-party file is kept in
this repository. They are installed server-side with a marker label and removed again at the
end; CRDs that were already there (a real cluster) are used as they are and left alone. The
chart's objects are then sent as a server-side dry run with strict field validation: a field
the CRD does not know, a wrong type or a duration the CRD's pattern refuses fails the test.
Three broken objects show that the API server really enforces those schemas.

`serial`: installing CRDs is cluster-scoped (tests/e2e/conftest.py, SERIAL_FILES).
Needs `go` (1.26, GOTOOLCHAIN=local as testbed/lib.sh) with access to the module proxy or a
module cache that holds the version; without it this test FAILS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_release import CHART, run, tool
from kubernetes import client
from support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.serial]

# kube-prometheus-stack 88.5.x ships prometheus-operator v0.93.x; its CRDs are the ones below.
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.93.0"
CRD_FILES = {
    "servicemonitors.monitoring.coreos.com": "monitoring.coreos.com_servicemonitors.yaml",
    "podmonitors.monitoring.coreos.com": "monitoring.coreos.com_podmonitors.yaml",
    "prometheusrules.monitoring.coreos.com": "monitoring.coreos.com_prometheusrules.yaml",
}
MARKER = "fillprob.testbed/installed-by"
MARKER_VALUE = "test_kube_prometheus_stack"
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
NAMESPACED_VALUES = CHART / "ci" / "namespaced-values.yaml"


def module_dir() -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.fail("go not found: needed to read prometheus-operator's CRDs from its Go module", pytrace=False)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    with tempfile.TemporaryDirectory() as outside_any_module:
        proc = subprocess.run(
            [go, "mod", "download", "-json", f"{PROMETHEUS_OPERATOR_MODULE}@{PROMETHEUS_OPERATOR_VERSION}"],
            capture_output=True, text=True, env=env, cwd=outside_any_module, timeout=300,
        )
    if proc.returncode != 0:
        pytest.fail(f"go mod download {PROMETHEUS_OPERATOR_MODULE}@{PROMETHEUS_OPERATOR_VERSION} failed:\n"
                    f"{proc.stdout}{proc.stderr}", pytrace=False)
    info = json.loads(proc.stdout)
    if info.get("Error") or not info.get("Dir"):
        pytest.fail(f"go mod download: {info}", pytrace=False)
    print(f"prometheus-operator CRDs from {info['Dir']} ({info.get('Sum')})")
    return Path(info["Dir"]) / "example" / "prometheus-operator-crd"


def kubectl(testbed, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([testbed.kubectl, "--kubeconfig", testbed.kubeconfig, *args], input=stdin,
                          capture_output=True, text=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def prometheus_operator_crds(testbed, k8s_api):
    """prometheus-operator's ServiceMonitor, PodMonitor and PrometheusRule CRDs on the API server."""
    ext = client.ApiextensionsV1Api(k8s_api)
    crd_dir = module_dir()
    installed: list[str] = []
    for name, filename in CRD_FILES.items():
        try:
            existing = ext.read_custom_resource_definition(name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            existing = None
        if existing is not None and (existing.metadata.labels or {}).get(MARKER) != MARKER_VALUE:
            version = (existing.metadata.annotations or {}).get("operator.prometheus.io/version")
            print(f"{name}: already installed (prometheus-operator {version}), used as is")
            continue
        crd = yaml.safe_load((crd_dir / filename).read_text())
        assert crd["metadata"]["name"] == name, (filename, crd["metadata"]["name"])
        crd["metadata"].setdefault("labels", {})[MARKER] = MARKER_VALUE
        # Server-side: the big CRDs do not fit a last-applied-configuration annotation.
        kubectl(testbed, "apply", "--server-side", "--force-conflicts", "--field-manager", MARKER_VALUE,
                "-f", "-", stdin=yaml.safe_dump(crd))
        installed.append(name)

    def established(name: str) -> bool:
        crd = ext.read_custom_resource_definition(name)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    for name in CRD_FILES:
        wait_for(f"CRD {name} Established", lambda n=name: established(n) or None, 60)
    print(f"installed for this test: {installed or 'none'}")
    yield
    if installed:
        kubectl(testbed, "delete", "crd", "-l", f"{MARKER}={MARKER_VALUE}", "--wait=true", "--timeout=120s")


@pytest.fixture
def namespace(k8s_api):
    core = client.CoreV1Api(k8s_api)
    name = f"kps-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def monitoring_objects(namespace: str, *values: str) -> list[dict[str, Any]]:
    out = run(tool("helm"), "template", "fpo", str(CHART), "--namespace", namespace,
              "--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true",
              "--set", "prometheusRule.enabled=true", *values)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d and d.get("kind") in MONITORING_KINDS]
    assert {d["kind"] for d in docs} == MONITORING_KINDS, [d["kind"] for d in docs]
    return docs


def dry_run(testbed, namespace: str, docs: list[dict[str, Any]]) -> subprocess.CompletedProcess:
    return kubectl(testbed, "apply", "--dry-run=server", "--validate=strict", "--server-side",
                   "--field-manager", "fillprob-e2e", "-n", namespace, "-f", "-",
                   stdin=yaml.safe_dump_all(docs), check=False)


@pytest.mark.parametrize("values", [[], ["-f", str(NAMESPACED_VALUES)]], ids=["cluster", "namespaced"])
def test_chart_monitoring_objects_pass_prometheus_operator_crds(testbed, prometheus_operator_crds, namespace, values):
    docs = monitoring_objects(namespace, *values)
    proc = dry_run(testbed, namespace, docs)
    assert proc.returncode == 0, f"the API server refused the chart's objects:\n{proc.stdout}\n{proc.stderr}"
    for doc in docs:
        line = f"{doc['kind'].lower()}.monitoring.coreos.com/{doc['metadata']['name']} serverside-applied (server dry run)"
        assert line in proc.stdout, proc.stdout
    print(proc.stdout.strip())


def test_the_crds_are_enforced(testbed, prometheus_operator_crds, namespace):
    """The negative control: objects the CRDs refuse are refused (the dry run above means something)."""
    docs = {d["kind"]: d for d in monitoring_objects(namespace)}
    broken = {
        "podTargetLabels not a list": ("PodMonitor", lambda d: d["spec"].__setitem__("podTargetLabels", "fillprob_rollout")),
        "an unknown field": ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("honourLabels", True)),
        "a duration the CRD refuses": ("PrometheusRule", lambda d: d["spec"]["groups"][-1]["rules"][0].__setitem__("for", "5 minutes")),
    }
    for why, (kind, breaking) in broken.items():
        doc = json.loads(json.dumps(docs[kind]))
        breaking(doc)
        proc = dry_run(testbed, namespace, [doc])
        assert proc.returncode != 0, f"{why}: the API server accepted it:\n{proc.stdout}"
        print(f"{why}: refused: {proc.stderr.strip().splitlines()[-1][:300]}")
