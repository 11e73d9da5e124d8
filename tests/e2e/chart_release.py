"""The operator installed by its Helm chart into the testbed (tests/e2e/test_chart.py and
test_alert_rollback.py).

`ChartRelease` installs charts/fillprob-operator with `helm` into a fresh operator namespace,
namespaced mode, watching one fresh grinder namespace (plus an "other" namespace it must not
touch). Everything else is the chart's defaults, as a user's `helm install` renders them: the
image `fillprob-operator:<appVersion>` (its ENTRYPOINT), the webhook token mounted from a
Secret, the restricted securityContext, Prometheus at the default
http://prometheus-operated.monitoring.svc:9090 (on the testbed a Service in front of the
testbed's Prometheus: testbed/manifests/monitoring.yaml). The pod runs under the chart's
ServiceAccount, in-cluster, so whatever it manages to do, the chart's RBAC allowed.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import uuid

from kubernetes import client
from support import GROUP, PLURAL, REPO_ROOT, VERSION, Env, get_through_port_forward, wait_for

CHART = REPO_ROOT / "charts" / "fillprob-operator"
TESTBED_BIN = REPO_ROOT / ".testbed" / "cache" / "bin"


def tool(name: str) -> str:
    path = TESTBED_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise AssertionError(f"{name} not found in {TESTBED_BIN} nor on PATH (make testbed-up builds it)")
    return found


def run(*args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)  # noqa: S603
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class ChartRelease:
    """One `helm install` of the chart, its namespaces, and how to reach its pod."""

    def __init__(self, api: client.ApiClient, prefix: str):
        suffix = uuid.uuid4().hex[:6]
        self.api = api
        self.release = f"fpo-{suffix}"
        self.fullname = f"{self.release}-fillprob-operator"
        self.namespace = f"{prefix}-op-{suffix}"
        self.watched = f"{prefix}-gr-{suffix}"
        self.other = f"{prefix}-other-{suffix}"
        self.core = client.CoreV1Api(api)
        self.installed = False

    # --- install / uninstall ----------------------------------------------------------
    def install(self, *extra_set: str) -> "ChartRelease":
        for ns in (self.namespace, self.watched, self.other):
            self.core.create_namespace({"metadata": {"name": ns}})
        started = time.monotonic()
        out = run(
            tool("helm"), "install", self.release, str(CHART),
            "--namespace", self.namespace,
            "--set", "rbac.scope=namespaced",
            "--set", f"watchNamespaces={{{self.watched}}}",
            "--set", "terminationGracePeriodSeconds=10",
            *[a for s in extra_set for a in ("--set", s)],
            "--wait", "--timeout", "180s",
        )
        self.installed = True
        status = next((line for line in out.stdout.splitlines() if line.startswith("STATUS:")), out.stdout)
        print(f"helm install {self.release} -n {self.namespace} watching {self.watched}: {status} "
              f"({time.monotonic() - started:.1f}s)")
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120) -> client.V1Pod:
        def ready() -> client.V1Pod | None:
            for pod in self.pods():
                if pod.metadata.deletion_timestamp is None and any(
                    c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
                ):
                    return pod
            return None

        return wait_for(f"the operator pod in {self.namespace} Ready", ready, timeout)

    def pods(self) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(
            self.namespace, label_selector=f"app.kubernetes.io/instance={self.release}"
        ).items

    def pod(self) -> client.V1Pod:
        return self.wait_ready()

    def uninstall(self) -> None:
        """Delete the watched namespace's rollouts (they carry no finalizer: test_uninstall.py
        uninstalls with them live), `helm uninstall`, and check that nothing of the release is left."""
        custom = client.CustomObjectsApi(self.api)
        for fpr in custom.list_namespaced_custom_object(GROUP, VERSION, self.watched, PLURAL)["items"]:
            custom.delete_namespaced_custom_object(GROUP, VERSION, self.watched, PLURAL, fpr["metadata"]["name"])
        wait_for(
            "the FillProbRollouts gone",
            lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, self.watched, PLURAL)["items"],
            90,
        )
        if self.installed:
            run(tool("helm"), "uninstall", self.release, "--namespace", self.namespace, "--wait", "--timeout", "120s")
            self.installed = False
        wait_for("the operator pod gone", lambda: not self.pods(), 90)
        left = self.leftovers()
        assert not left, f"helm uninstall left these behind: {left}"

    def leftovers(self) -> list[str]:
        rbac = client.RbacAuthorizationV1Api(self.api)
        selector = f"app.kubernetes.io/instance={self.release}"
        left = [f"ClusterRole/{o.metadata.name}" for o in rbac.list_cluster_role(label_selector=selector).items]
        left += [f"ClusterRoleBinding/{o.metadata.name}"
                 for o in rbac.list_cluster_role_binding(label_selector=selector).items]
        for ns in (self.namespace, self.watched, self.other):
            left += [f"Role/{ns}/{o.metadata.name}" for o in rbac.list_namespaced_role(ns, label_selector=selector).items]
            left += [f"RoleBinding/{ns}/{o.metadata.name}"
                     for o in rbac.list_namespaced_role_binding(ns, label_selector=selector).items]
            left += [f"Secret/{ns}/{o.metadata.name}"
                     for o in self.core.list_namespaced_secret(ns, label_selector=selector).items]
            left += [f"ServiceAccount/{ns}/{o.metadata.name}"
                     for o in self.core.list_namespaced_service_account(ns, label_selector=selector).items]
            left += [f"Service/{ns}/{o.metadata.name}"
                     for o in self.core.list_namespaced_service(ns, label_selector=selector).items]
        apps = client.AppsV1Api(self.api)
        left += [f"Deployment/{o.metadata.name}"
                 for o in apps.list_namespaced_deployment(self.namespace, label_selector=selector).items]
        return left

    def teardown(self) -> None:
        """Best effort after a failed test: uninstall, then delete the namespaces."""
        try:
            if self.installed:
                self.uninstall()
        except Exception as exc:  # noqa: BLE001 - report, then remove the namespaces anyway
            print(f"teardown of {self.release}: {exc}")
            if self.installed:
                run(tool("helm"), "uninstall", self.release, "--namespace", self.namespace, check=False)
        for ns in (self.watched, self.other, self.namespace):
            try:
                self.core.delete_namespace(ns)
            except client.ApiException:
                pass

    # --- the running operator -----------------------------------------------------------
    def logs(self, tail: int = 80) -> str:
        proc = run(tool("kubectl"), "logs", "-n", self.namespace, f"deploy/{self.fullname}",
                   f"--tail={tail}", check=False)
        lines = [line for line in proc.stdout.splitlines() if "GET /healthz" not in line]
        return "operator pod log tail:\n" + "\n".join(lines) + proc.stderr

    def webhook_token(self) -> str:
        secret = self.core.read_namespaced_secret(f"{self.fullname}-webhook", self.namespace)
        return base64.b64decode(secret.data["token"]).decode()

    def webhook_url(self) -> str:
        """The webhook through the release's Service (its ClusterIP: this machine reaches the
        Service range through kube-proxy, as Alertmanager in a cluster reaches the DNS name)."""
        service = self.core.read_namespaced_service(self.fullname, self.namespace)
        port = next(p.port for p in service.spec.ports if p.name == "webhook")
        return f"http://{service.spec.cluster_ip}:{port}/alertmanager"

    def exec(self, *command: str) -> str:
        """Run a command in the operator's container (kubectl exec, through the kubelet)."""
        pod = self.pod()
        proc = run(tool("kubectl"), "exec", "-n", self.namespace, pod.metadata.name, "-c", "operator", "--",
                   *command)
        return proc.stdout

    def get_through_port_forward(self, port: int, path: str) -> str:
        """GET <path> on the operator pod's <port> through `kubectl port-forward`."""
        return get_through_port_forward([tool("kubectl")], self.namespace, self.pod().metadata.name, port, path)

    def serviceaccount_token(self) -> str:
        """The token the operator's process authenticates with, read inside its container."""
        return self.exec("python3", "-c",
                         "print(open('/var/run/secrets/kubernetes.io/serviceaccount/token').read())").strip()

    def whoami(self, token: str) -> str:
        """Who the API server says `token` is (a SelfSubjectReview sent with that token only)."""
        config = client.Configuration()
        base = self.api.configuration
        config.host, config.ssl_ca_cert = base.host, base.ssl_ca_cert
        config.api_key = {"authorization": f"Bearer {token}"}
        with client.ApiClient(config) as api:
            review = client.AuthenticationV1Api(api).create_self_subject_review({})
        return review.status.user_info.username

    def sa_user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def can_i(self, *args: str) -> bool:
        proc = run(tool("kubectl"), "auth", "can-i", *args, f"--as={self.sa_user()}", check=False)
        answer = proc.stdout.strip()
        if answer not in ("yes", "no"):
            raise AssertionError(f"kubectl auth can-i {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return answer == "yes"

    def env(self) -> Env:
        """support.Env on the watched namespace (grinder Deployment + FillProbRollout helpers)."""
        return Env(api=self.api, namespace=self.watched)


def wait_rollout(env: Env, release: ChartRelease, what: str, predicate, timeout: float = 180) -> dict:
    try:
        return wait_for(what, lambda: (lambda st: st if predicate(st) else None)(env.status()), timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nstatus: {json.dumps(env.status(), indent=1)[:3000]}\n{release.logs()}") from None
