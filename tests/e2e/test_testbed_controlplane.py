"""The testbed is a real control plane: version, controllers, scheduler, RBAC, Prometheus, Alertmanager."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import TypeVar

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.e2e

NODE = "testbed"  # testbed/lib.sh TB_NODE_NAME
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.5) -> T:
    """Poll probe until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported at the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


def http_json(method: str, url: str, body: object | None = None, timeout: float = 5.0) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
        raw = resp.read()
    return json.loads(raw) if raw.strip() else None


@pytest.fixture
def namespace(k8s_api) -> Iterator[str]:
    name = f"e2e-cp-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def test_apiserver_reports_v1_36(k8s_api):
    info = client.VersionApi(k8s_api).get_code()
    assert info.git_version.startswith("v1.36."), info.git_version
    assert (info.major, info.minor) == ("1", "36")


def test_kubectl_from_cache_reports_v1_36(testbed):
    import subprocess

    out = subprocess.run(
        [testbed.kubectl, "--kubeconfig", testbed.kubeconfig, "version", "-o", "json"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    versions = json.loads(out)
    assert versions["clientVersion"]["gitVersion"].startswith("v1.36.")
    assert versions["serverVersion"]["gitVersion"].startswith("v1.36.")


def _container(command: list[str]) -> client.V1Container:
    return client.V1Container(name="main", image="grinder-sim:local", command=command)


def test_deployment_controller_creates_replicaset_and_pod(k8s_api, namespace):
    apps = client.AppsV1Api(k8s_api)
    core = client.CoreV1Api(k8s_api)
    labels = {"app": "cp-check"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="cp-check"),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[_container(["python3", "-c", "import time; time.sleep(600)"])],
                        termination_grace_period_seconds=2,
                    ),
                ),
            ),
        ),
    )

    def owned_replicaset():
        for rs in apps.list_namespaced_replica_set(namespace).items:
            if any(o.kind == "Deployment" and o.name == "cp-check" for o in rs.metadata.owner_references or []):
                return rs
        return None

    rs = wait_for("the Deployment controller to create a ReplicaSet", owned_replicaset, timeout=30)
    assert rs.spec.replicas == 1

    def owned_pod():
        pods = core.list_namespaced_pod(namespace, label_selector="app=cp-check").items
        return [p for p in pods if any(o.kind == "ReplicaSet" and o.name == rs.metadata.name for o in p.metadata.owner_references or [])]

    pods = wait_for("the ReplicaSet controller to create a Pod", owned_pod, timeout=30)
    # The ServiceAccount admission plugin mounted the default ServiceAccount's token.
    assert pods[0].spec.service_account_name == "default"
    assert any(v.projected for v in pods[0].spec.volumes or []), "no projected SA token volume: ServiceAccount admission off?"


def test_job_controller_creates_pod(k8s_api, namespace):
    batch = client.BatchV1Api(k8s_api)
    core = client.CoreV1Api(k8s_api)
    batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(name="cp-job"),
            spec=client.V1JobSpec(
                backoff_limit=0,
                template=client.V1PodTemplateSpec(
                    spec=client.V1PodSpec(restart_policy="Never", containers=[_container(["python3", "-c", "print('ok')"])]),
                ),
            ),
        ),
    )
    pods = wait_for(
        "the Job controller to create a Pod",
        lambda: core.list_namespaced_pod(namespace, label_selector="job-name=cp-job").items,
        timeout=30,
    )
    assert pods[0].metadata.owner_references[0].kind == "Job"


def test_scheduler_binds_pod_to_the_node(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    nodes = [n.metadata.name for n in core.list_node().items]
    assert NODE in nodes, f"no node {NODE!r} registered (nodes: {nodes}); is the testbed's kubelet running (make testbed-up)?"
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="sched-check"),
            spec=client.V1PodSpec(
                containers=[_container(["python3", "-c", "import time; time.sleep(600)"])],
                termination_grace_period_seconds=2,
            ),
        ),
    )
    pod = wait_for(
        "the scheduler to bind the pod",
        lambda: (p := core.read_namespaced_pod("sched-check", namespace)).spec.node_name and p,
        timeout=30,
    )
    assert pod.spec.node_name == NODE


def test_serviceaccount_token_outside_its_role_gets_403(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="limited")))
    rbac.create_namespaced_role(
        namespace,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="configmap-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="limited-reads-configmaps"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="configmap-reader"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="limited", namespace=namespace)],
        ),
    )
    token = core.create_namespaced_service_account_token(
        "limited", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    ).status.token

    admin_cfg = k8s_api.configuration
    cfg = client.Configuration()
    cfg.host = admin_cfg.host
    cfg.ssl_ca_cert = admin_cfg.ssl_ca_cert
    cfg.api_key = {"authorization": f"Bearer {token}"}
    sa_api = client.ApiClient(cfg)
    sa_core = client.CoreV1Api(sa_api)

    review = client.AuthenticationV1Api(sa_api).create_self_subject_review(client.V1SelfSubjectReview())
    assert review.status.user_info.username == f"system:serviceaccount:{namespace}:limited"

    # Inside its Role: allowed (RBAC bindings take effect at once, but poll to be safe).
    wait_for("the Role to allow listing configmaps", lambda: sa_core.list_namespaced_config_map(namespace) is not None, timeout=15)
    # Outside its Role: forbidden.
    for call, what in (
        (lambda: sa_core.list_namespaced_secret(namespace), "list secrets in its namespace"),
        (lambda: sa_core.list_namespaced_pod("kube-system"), "list pods in kube-system"),
        (lambda: sa_core.delete_namespaced_config_map("anything", namespace), "delete a configmap"),
    ):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403, f"{what}: expected 403, got {err.value.status}"


class _Webhook:
    """A loopback HTTP receiver that records Alertmanager webhook payloads."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.payloads.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def firing(self, alertname: str) -> list[dict]:
        return [a for p in self.payloads for a in p.get("alerts", []) if a["labels"].get("alertname") == alertname and a["status"] == "firing"]


@pytest.fixture
def webhook(testbed) -> Iterator[_Webhook]:
    """Point the testbed Alertmanager at a loopback receiver for the test, then restore its config."""
    if testbed.alertmanager_config is None:
        pytest.fail("this test rewrites the testbed's Alertmanager config; ALERTMANAGER_CONFIG is unknown for this cluster")
    original = testbed.alertmanager_config.read_text()
    with _Webhook() as hook:
        config = (
            "route:\n  receiver: test\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n"
            f"receivers:\n  - name: test\n    webhook_configs:\n      - url: \"{hook.url}\"\n        send_resolved: true\n"
        )
        _reload_alertmanager(testbed, config, hook.url)
        try:
            yield hook
        finally:
            _reload_alertmanager(testbed, original, None)


def _reload_alertmanager(testbed, config_text: str, expect_url: str | None) -> None:
    testbed.alertmanager_config.write_text(config_text)
    urllib.request.urlopen(urllib.request.Request(f"{testbed.alertmanager_url}/-/reload", method="POST"), timeout=10)
    if expect_url:
        wait_for(
            "Alertmanager to load the new config",
            lambda: expect_url in http_json("GET", f"{testbed.alertmanager_url}/api/v2/status")["config"]["original"],
            timeout=15,
        )


def test_alertmanager_delivers_firing_alert_to_webhook(testbed, webhook):
    alertname = f"TestbedE2E{uuid.uuid4().hex[:8]}"
    now = datetime.now(timezone.utc)
    http_json(
        "POST",
        f"{testbed.alertmanager_url}/api/v2/alerts",
        [
            {
                "labels": {"alertname": alertname, "severity": "none"},
                "annotations": {"summary": "testbed e2e"},
                "startsAt": now.isoformat(),
                "endsAt": (now + timedelta(minutes=5)).isoformat(),
            }
        ],
    )
    alerts = wait_for("the webhook to receive the firing alert", lambda: webhook.firing(alertname), timeout=30)
    assert alerts[0]["annotations"]["summary"] == "testbed e2e"


def test_prometheus_rule_fires_into_alertmanager(testbed, webhook):
    """A rule dropped into the rules dir, after /-/reload, fires and reaches the webhook through Alertmanager."""
    if testbed.prometheus_rules_dir is None:
        pytest.fail("this test drops a rule file into the testbed's Prometheus; PROMETHEUS_RULES_DIR is unknown")
    alertname = f"TestbedRule{uuid.uuid4().hex[:8]}"
    rule_file = testbed.prometheus_rules_dir / f"{alertname}.yml"
    rule_file.write_text(f"groups:\n  - name: {alertname}\n    rules:\n      - alert: {alertname}\n        expr: vector(1)\n")
    try:
        urllib.request.urlopen(urllib.request.Request(f"{testbed.prometheus_url}/-/reload", method="POST"), timeout=10)
        wait_for("Prometheus to fire the rule and Alertmanager to deliver it", lambda: webhook.firing(alertname), timeout=45)
    finally:
        rule_file.unlink(missing_ok=True)
        urllib.request.urlopen(urllib.request.Request(f"{testbed.prometheus_url}/-/reload", method="POST"), timeout=10)


METRICS_SERVER = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"testbed_scrape_check 1\\n"
        self.send_response(200 if self.path == "/custom-metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer((os.environ["POD_IP"], 9102), H).serve_forever()
"""


def test_prometheus_scrapes_annotated_pod_discovered_through_the_apiserver(testbed, k8s_api, namespace):
    """kubernetes_sd_configs (role pod) finds the pod; relabelling applies prometheus.io/port and /path and
    sets the namespace and pod labels; the scrape reaches the process on its own pod IP."""
    core = client.CoreV1Api(k8s_api)
    container = _container(["python3", "-c", METRICS_SERVER])
    container.env = [client.V1EnvVar(name="POD_IP", value_from=client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path="status.podIP")))]
    core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(
                name="scrape-me",
                annotations={"prometheus.io/scrape": "true", "prometheus.io/port": "9102", "prometheus.io/path": "/custom-metrics"},
            ),
            spec=client.V1PodSpec(containers=[container], termination_grace_period_seconds=2),
        ),
    )
    query = f'testbed_scrape_check{{namespace="{namespace}",pod="scrape-me"}}'

    def scraped():
        data = http_json("GET", f"{testbed.prometheus_url}/api/v1/query?query={urllib.parse.quote(query)}")["data"]
        return data["result"]

    result = wait_for(f"Prometheus to scrape the pod ({query})", scraped, timeout=60)
    assert result[0]["value"][1] == "1"
    pod_ip = core.read_namespaced_pod("scrape-me", namespace).status.pod_ip
    targets = http_json("GET", f"{testbed.prometheus_url}/api/v1/targets?state=active")["data"]["activeTargets"]
    mine = [t for t in targets if t["labels"].get("pod") == "scrape-me" and t["labels"].get("namespace") == namespace]
    assert mine and mine[0]["scrapeUrl"] == f"http://{pod_ip}:9102/custom-metrics", mine
