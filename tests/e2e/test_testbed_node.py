"""The testbed's node is a real one: the kubelet on containerd and runc, pods on the bridge,
Services through kube-proxy, cluster DNS from CoreDNS (testbed/node.sh, testbed/up.sh).

Each test shows one thing a workload meets first on a real cluster: the image's ENTRYPOINT and
a restricted securityContext enforced, Secret volumes, exec and logs, rolling pods on an env
change, DNS and Services from inside a pod, port-forward, restarts, probes and grace periods,
and no way out of the machine. They look at the node only as a user would (the API, kubectl,
the pod IPs this machine routes to), never at its processes or files.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import subprocess
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from support import EXAMPLES, get_through_port_forward, wait_for

pytestmark = pytest.mark.e2e

NODE = "testbed"
NODE_IP = "10.88.0.1"
POD_CIDR = ipaddress.ip_network("10.88.0.0/16")
KUBELET_PORT = 10250
IMAGE = "grinder-sim:local"
# PID 1 of a container ignores a signal it has no handler for: exit on SIGTERM like a real server.
IDLE = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(86400)"
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


# ---------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def core(k8s_api) -> client.CoreV1Api:
    api = client.CoreV1Api(k8s_api)
    nodes = [n.metadata.name for n in api.list_node().items]
    if NODE not in nodes:
        pytest.fail(f"no node {NODE!r} in the cluster (nodes: {nodes}); is the testbed up (make testbed-up)?", pytrace=False)
    return api


@pytest.fixture
def ns(core, request) -> Iterator[str]:
    name = f"e2e-node-{request.node.name[5:].replace('_', '-')[:30].strip('-')}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_for("the default ServiceAccount", lambda: core.read_namespaced_service_account("default", name), timeout=30)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def kubectl(testbed, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    done = subprocess.run([testbed.kubectl, "--kubeconfig", testbed.kubeconfig, *args],  # noqa: S603
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def pod_python(testbed, ns: str, pod: str, code: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """`kubectl exec POD -- python3 -c CODE` (the image has python3, not necessarily coreutils)."""
    return kubectl(testbed, "-n", ns, "exec", pod, "--", "python3", "-c", textwrap.dedent(code), check=check, timeout=timeout)


def pod_json(testbed, ns: str, pod: str, code: str, timeout: float = 60) -> dict:
    """Run CODE in the pod; its last stdout line is a JSON object."""
    out = pod_python(testbed, ns, pod, code, timeout=timeout).stdout
    return json.loads(out.strip().splitlines()[-1])


def story(core, ns: str) -> str:
    """What the namespace's pods and events say: appended to a failed wait."""
    lines = []
    for p in core.list_namespaced_pod(ns).items:
        lines.append(f"pod {p.metadata.name}: phase={p.status.phase} ip={p.status.pod_ip} node={p.spec.node_name}"
                     f"{' (terminating)' if p.metadata.deletion_timestamp else ''}")  # fmt: skip
        for s in p.status.container_statuses or []:
            st = s.state
            now = (f"waiting {st.waiting.reason}: {st.waiting.message}" if st.waiting
                   else f"terminated {st.terminated.reason} exit {st.terminated.exit_code}" if st.terminated else "running")  # fmt: skip
            lines.append(f"  {s.name}: ready={s.ready} restarts={s.restart_count} {now}")
    events = core.list_namespaced_event(ns).items
    events.sort(key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
    for e in events[-20:]:
        lines.append(f"event {e.type} {e.reason} {e.involved_object.kind}/{e.involved_object.name}: {(e.message or '').strip()}")
    return "\n".join(lines)


def wait_in(core, ns: str, what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    """support.wait_for, with the namespace's pods and events in the failure message."""
    try:
        return wait_for(what, probe, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- {ns}:\n{story(core, ns)}") from None


def container_status(pod: client.V1Pod) -> client.V1ContainerStatus | None:
    return (pod.status.container_statuses or [None])[0]


def is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def bare_pod(name: str, command: list[str], **spec: Any) -> dict:
    """A pod of the grinder image, restricted like the example, running COMMAND."""
    container = {"name": "main", "image": IMAGE, "command": command, "securityContext": RESTRICTED_CONTAINER}
    container.update(spec.pop("container", {}))
    return {"metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [container], "securityContext": RESTRICTED_POD,
                     "terminationGracePeriodSeconds": 5, **spec}}  # fmt: skip


def running_pod(core, ns: str, name: str, timeout: float = 60) -> client.V1Pod:
    def ready():
        pod = core.read_namespaced_pod(name, ns)
        return pod if pod.status.phase == "Running" and is_ready(pod) else None

    return wait_in(core, ns, f"pod {ns}/{name} Running and Ready", ready, timeout)


def grinder_deployment(name: str, env: dict[str, str] | None = None, replicas: int = 1) -> dict:
    """examples/grinder-deployment.yaml as a user applies it (no `command`: the image's
    ENTRYPOINT), named NAME, labelled app=NAME, the restricted securityContext spelled out,
    ENV added to (or replacing) the example's."""
    body = yaml.safe_load((EXAMPLES / "grinder-deployment.yaml").read_text())
    body["metadata"] = {"name": name, "labels": {"app": name}}
    body["spec"]["replicas"] = replicas
    body["spec"]["selector"] = {"matchLabels": {"app": name}}
    template = body["spec"]["template"]
    template["metadata"]["labels"] = {"app": name}
    pod = template["spec"]
    pod["securityContext"] = dict(RESTRICTED_POD)
    container = pod["containers"][0]
    assert "command" not in container and "args" not in container, "the example must run the image's ENTRYPOINT"
    container["securityContext"] = dict(RESTRICTED_CONTAINER)
    container["env"] = [e for e in container["env"] if e["name"] not in (env or {})]
    container["env"] += [{"name": k, "value": v} for k, v in (env or {}).items()]
    return body


def rolled_out(apps, ns: str, name: str) -> client.V1Deployment | None:
    """The Deployment when its latest template runs on every replica and it is Available."""
    d = apps.read_namespaced_deployment(name, ns)
    s = d.status
    done = (s.observed_generation == d.metadata.generation and (s.replicas or 0) == d.spec.replicas
            and (s.updated_replicas or 0) == d.spec.replicas and (s.available_replicas or 0) == d.spec.replicas)  # fmt: skip
    return d if done and any(c.type == "Available" and c.status == "True" for c in s.conditions or []) else None


def wait_available(apps, core, ns: str, name: str, timeout: float = 90) -> client.V1Deployment:
    return wait_in(core, ns, f"Deployment {ns}/{name} Available", lambda: rolled_out(apps, ns, name), timeout)


def grinder_pod(name: str, env: dict[str, str] | None = None) -> dict:
    """A bare pod of the example's template (the image's ENTRYPOINT, restricted, its hostPath)."""
    template = grinder_deployment(name, env)["spec"]["template"]
    return {"metadata": {"name": name, "labels": template["metadata"]["labels"]}, "spec": template["spec"]}


def live_pods(core, ns: str, app: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(ns, label_selector=f"app={app}").items
    return [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase == "Running"]


def http_get(url: str, timeout: float = 3) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (pod IPs, loopback)
        return resp.read().decode()


def gone(core, ns: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, ns)
    except ApiException as exc:
        return exc.status == 404
    return False


# ---------------------------------------------------------------------------------------- 1. the node


def test_node_is_a_kubelet_on_containerd_serving_tls_on_the_node_ip(core, k8s_api):
    node = core.read_node(NODE)
    conditions = {c.type: c for c in node.status.conditions}
    assert conditions["Ready"].status == "True", f"node not Ready: {conditions['Ready'].reason}: {conditions['Ready'].message}"
    pressure = {t: conditions[t].status for t in ("MemoryPressure", "DiskPressure", "PIDPressure") if t in conditions}
    assert set(pressure.values()) == {"False"}, f"node under pressure: {pressure}"
    assert not node.spec.unschedulable, "node is cordoned"
    info = node.status.node_info
    assert info.kubelet_version == "v1.36.3", f"kubeletVersion {info.kubelet_version}"
    assert info.container_runtime_version.startswith("containerd://2."), f"containerRuntimeVersion {info.container_runtime_version}"
    addresses = {(a.type, a.address) for a in node.status.addresses}
    assert ("InternalIP", NODE_IP) in addresses, f"addresses {sorted(addresses)}"
    assert node.status.daemon_endpoints.kubelet_endpoint.port == KUBELET_PORT

    # A container the node runs (CoreDNS) is a containerd container.
    dns = [p for p in core.list_namespaced_pod("kube-system", label_selector="k8s-app=kube-dns").items if p.status.phase == "Running"]
    assert dns, "no running CoreDNS pod in kube-system"
    assert dns[0].spec.node_name == NODE and container_status(dns[0]).container_id.startswith("containerd://"), container_status(dns[0])

    # The heartbeat: the node's Lease is held by the kubelet and renewed (every 10 s by default).
    leases = client.CoordinationV1Api(k8s_api)
    lease = leases.read_namespaced_lease(NODE, "kube-node-lease")
    assert lease.spec.holder_identity == NODE, lease.spec.holder_identity
    age = (datetime.now(timezone.utc) - lease.spec.renew_time).total_seconds()
    assert age < lease.spec.lease_duration_seconds, f"lease renewed {age:.0f}s ago (duration {lease.spec.lease_duration_seconds}s)"
    first = lease.spec.renew_time
    wait_for("the kubelet to renew its Lease again", lambda: leases.read_namespaced_lease(NODE, "kube-node-lease").spec.renew_time > first, timeout=30)

    # The kubelet's API, on the node IP, with a serving certificate from the cluster CA for that
    # IP; without credentials it refuses (anonymous auth off), which is the answer we want.
    ctx = ssl.create_default_context(cafile=k8s_api.configuration.ssl_ca_cert)
    conn = http.client.HTTPSConnection(NODE_IP, KUBELET_PORT, context=ctx, timeout=5)
    try:
        conn.request("GET", "/pods")
        peer = conn.sock.getpeercert()
        resp = conn.getresponse()
        assert resp.status in (401, 403), f"GET https://{NODE_IP}:{KUBELET_PORT}/pods without credentials: HTTP {resp.status} {resp.read()[:200]!r}"
    finally:
        conn.close()
    assert ("IP Address", NODE_IP) in peer.get("subjectAltName", ()), f"kubelet certificate SANs: {peer.get('subjectAltName')}"


# ---------------------------------------------------------------------------------------- 2. the grinder as users run it

SECURITY_CHECK = """
import errno, json, os
# PID 1 is the simulator itself: what the runtime enforced on it is what counts.
status = dict(line.split(":\\t", 1) for line in open("/proc/1/status").read().splitlines() if ":\\t" in line)
try:
    open("/written-by-the-test", "w").close()
    root_write = "succeeded"
except OSError as exc:
    root_write = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps({
    "uid": int(status["Uid"].split()[0]), "exec_uid": os.getuid(),
    "pid1": open("/proc/1/cmdline").read().split("\\0")[:-1],
    "secret": open("/etc/grinder-creds/token").read(),
    "root_write": root_write,
    "no_new_privs": status.get("NoNewPrivs", "?").strip(),
    "seccomp": status.get("Seccomp", "?").strip(),
    "cap_eff": status.get("CapEff", "?").strip(),
}))
"""


def test_grinder_runs_its_entrypoint_restricted_with_a_secret_volume(testbed, core, k8s_api, ns):
    apps = client.AppsV1Api(k8s_api)
    token = uuid.uuid4().hex
    core.create_namespaced_secret(ns, {"metadata": {"name": "grinder-creds"}, "stringData": {"token": token}})
    body = grinder_deployment("grinder")
    pod_spec = body["spec"]["template"]["spec"]
    pod_spec["volumes"].append({"name": "creds", "secret": {"secretName": "grinder-creds"}})
    pod_spec["containers"][0]["volumeMounts"].append({"name": "creds", "mountPath": "/etc/grinder-creds", "readOnly": True})
    apps.create_namespaced_deployment(ns, body)
    wait_available(apps, core, ns, "grinder")

    [pod] = live_pods(core, ns, "grinder")
    name = pod.metadata.name
    assert not pod.spec.containers[0].command, "the Deployment has no command: the image's ENTRYPOINT runs"
    seen = pod_json(testbed, ns, name, SECURITY_CHECK)
    assert seen["pid1"] == ["python3", "/app/grinder_sim.py"], f"PID 1 in the container is {seen['pid1']}, not the image's ENTRYPOINT"
    assert seen["uid"] != 0, f"the simulator runs as uid {seen['uid']} (root); the image's USER is non-root"
    assert seen["exec_uid"] == seen["uid"], f"kubectl exec ran as uid {seen['exec_uid']}, the simulator as {seen['uid']}"
    assert seen["secret"] == token, f"the Secret's file at /etc/grinder-creds/token reads {seen['secret']!r}"
    assert seen["root_write"] == "EROFS", f"writing to / {seen['root_write']} (readOnlyRootFilesystem: expected EROFS)"
    assert seen["no_new_privs"] == "1", f"NoNewPrivs {seen['no_new_privs']} (allowPrivilegeEscalation: false)"
    assert seen["seccomp"] == "2", f"Seccomp mode {seen['seccomp']} (RuntimeDefault: 2, a filter)"
    assert int(seen["cap_eff"], 16) == 0, f"effective capabilities {seen['cap_eff']} (drop: [ALL])"

    logs = kubectl(testbed, "-n", ns, "logs", name).stdout
    assert "GRINDER_SIM_STARTED" in logs, f"no startup line in kubectl logs:\n{logs[-2000:]}"
    assert f"pod_ip={pod.status.pod_ip} " in logs, f"the simulator did not listen on the pod IP {pod.status.pod_ip}:\n{logs[-2000:]}"

    pod_ip = ipaddress.ip_address(pod.status.pod_ip)
    assert pod_ip in POD_CIDR, f"pod IP {pod_ip} not in {POD_CIDR}"
    metrics = wait_for(f"/metrics at http://{pod_ip}:9090 from this machine", lambda: http_get(f"http://{pod_ip}:9090/metrics"), timeout=20)
    assert "grinder_router_fill_prob_enforce_enabled 0" in metrics, metrics[:1000]


# ---------------------------------------------------------------------------------------- 3. rolling on env change


def test_env_change_rolls_new_pods_that_see_the_new_value(testbed, core, k8s_api, ns):
    apps = client.AppsV1Api(k8s_api)
    apps.create_namespaced_deployment(ns, grinder_deployment("grinder", env={"X": "v1"}, replicas=2))
    wait_available(apps, core, ns, "grinder")
    old = {p.metadata.name for p in live_pods(core, ns, "grinder")}
    assert len(old) == 2, old
    read_x = 'import os; print(os.environ["X"])'
    for name in old:
        assert pod_python(testbed, ns, name, read_x).stdout.strip() == "v1", f"pod {name}"

    kubectl(testbed, "-n", ns, "set", "env", "deployment/grinder", "X=v2")

    def rolled():
        pods = live_pods(core, ns, "grinder") if rolled_out(apps, ns, "grinder") else []
        return pods if len(pods) == 2 and not {p.metadata.name for p in pods} & old else None

    new = wait_in(core, ns, "the rollout to 2 new Running pods", rolled, timeout=90)
    for pod in new:
        assert pod_python(testbed, ns, pod.metadata.name, read_x).stdout.strip() == "v2", f"pod {pod.metadata.name}"
    wait_in(core, ns, f"the old pods {sorted(old)} to be deleted", lambda: all(gone(core, ns, n) for n in old), timeout=30)


# ---------------------------------------------------------------------------------------- 4. DNS, Services, the API from a pod

SERVICE_CHECK = """
import json, socket, urllib.request
out = {"resolv.conf": open("/etc/resolv.conf").read()}
for key, name in (("kubernetes", "kubernetes.default.svc.cluster.local"), ("web", "web.@NS@.svc.cluster.local"), ("web short", "web")):
    try:
        out[key] = socket.gethostbyname(name)
    except OSError as exc:
        out[key] = f"{type(exc).__name__}: {exc}"
try:
    with urllib.request.urlopen("http://@CLUSTER_IP@/metrics", timeout=5) as resp:
        out["through the Service"] = resp.read().decode()
except OSError as exc:
    out["through the Service"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

API_CHECK = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(sa + "/token").read()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
def call(method, path, body=None):
    req = urllib.request.Request("https://kubernetes.default.svc" + path, method=method,
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return json.loads(resp.read())
review = call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
              {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
print(json.dumps({"env": os.environ.get("KUBERNETES_SERVICE_HOST"), "version": call("GET", "/version")["gitVersion"],
                  "user": review["status"]["userInfo"]["username"]}))
"""


def test_pod_resolves_cluster_names_and_reaches_a_service(testbed, core, k8s_api, ns):
    apps = client.AppsV1Api(k8s_api)
    apps.create_namespaced_deployment(ns, grinder_deployment("web"))
    svc = core.create_namespaced_service(ns, {"metadata": {"name": "web"},
                                              "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 9090}]}})  # fmt: skip
    core.create_namespaced_pod(ns, bare_pod("client", ["python3", "-c", IDLE]))
    wait_available(apps, core, ns, "web")
    running_pod(core, ns, "client")
    cluster_ip = svc.spec.cluster_ip
    api_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    dns_ip = core.read_namespaced_service("kube-dns", "kube-system").spec.cluster_ip

    code = SERVICE_CHECK.replace("@NS@", ns).replace("@CLUSTER_IP@", cluster_ip)
    # kube-proxy programs the Service once its endpoint is ready: a moment after Available.
    seen = wait_in(core, ns, f"the Service web ({cluster_ip}) to answer from pod client",
                   lambda: "grinder_router_orders_total" in (out := pod_json(testbed, ns, "client", code))["through the Service"] and out, timeout=30)
    assert f"nameserver {dns_ip}" in seen["resolv.conf"], f"the kubelet's resolv.conf does not name kube-dns {dns_ip}:\n{seen['resolv.conf']}"
    assert f"search {ns}.svc.cluster.local svc.cluster.local cluster.local" in seen["resolv.conf"], seen["resolv.conf"]
    assert seen["kubernetes"] == api_ip, f"kubernetes.default.svc.cluster.local -> {seen['kubernetes']}, the Service is {api_ip}"
    assert seen["web"] == cluster_ip, f"web.{ns}.svc.cluster.local -> {seen['web']}, the Service is {cluster_ip}"
    assert seen["web short"] == cluster_ip, f"web (search path) -> {seen['web short']}, the Service is {cluster_ip}"
    assert "grinder_router_orders_total" in seen["through the Service"], seen["through the Service"][:500]


def test_pod_reaches_the_api_server_with_its_serviceaccount_token(testbed, core, ns):
    core.create_namespaced_pod(ns, bare_pod("client", ["python3", "-c", IDLE]))
    running_pod(core, ns, "client")
    api_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    done = pod_python(testbed, ns, "client", API_CHECK, check=False)
    assert done.returncode == 0, f"GET https://kubernetes.default.svc/version from the pod failed:\n{done.stdout}{done.stderr}"
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["env"] == api_ip, f"KUBERNETES_SERVICE_HOST={seen['env']}, the kubernetes Service is {api_ip}"
    assert seen["version"].startswith("v1.36."), seen["version"]
    assert seen["user"] == f"system:serviceaccount:{ns}:default", f"the API server saw {seen['user']!r}"


# ---------------------------------------------------------------------------------------- 5. port-forward


def test_kubectl_port_forward_reaches_the_pod_port(testbed, core, k8s_api, ns):
    apps = client.AppsV1Api(k8s_api)
    # CRI port-forward dials localhost inside the pod's network namespace (containerd's
    # sandbox_portforward_linux.go), so the simulator listens on every address here, not only
    # on its pod IP as in the example.
    apps.create_namespaced_deployment(ns, grinder_deployment("grinder", env={"POD_IP": "0.0.0.0"}))
    wait_available(apps, core, ns, "grinder")
    [pod] = live_pods(core, ns, "grinder")
    metrics = get_through_port_forward([testbed.kubectl, "--kubeconfig", testbed.kubeconfig], ns, pod.metadata.name,
                                       9090, "/metrics")
    assert "grinder_router_orders_total" in metrics, metrics[:1000]


# ---------------------------------------------------------------------------------------- 6. restarts, probes, grace


def test_container_exiting_non_zero_goes_to_crash_loop_back_off(testbed, core, ns):
    code = "print('crasher ran', flush=True); raise SystemExit(3)"
    core.create_namespaced_pod(ns, bare_pod("crasher", ["python3", "-c", code]))

    def looping():
        s = container_status(core.read_namespaced_pod("crasher", ns))
        waiting = s and s.state.waiting
        return s if waiting and waiting.reason == "CrashLoopBackOff" and s.restart_count >= 1 else None

    s = wait_in(core, ns, "CrashLoopBackOff with a restart counted", looping, timeout=90)
    terminated = s.last_state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error"), f"last state: {terminated}"
    # Not ready while it waits in back-off: judged on the same status read as the back-off
    # (a second read can catch the next restart running, and Ready with it).
    pod = core.read_namespaced_pod("crasher", ns)
    assert pod.status.phase == "Running", f"phase {pod.status.phase}"
    assert not s.ready, f"container ready while in CrashLoopBackOff: {s}"
    # The status read above may already be a restart old: the container it calls "last" can be
    # gone (the kubelet keeps one dead container), and the kubelet then answers 200 with "unable
    # to retrieve container logs". Every run logs the same line: ask until one answers.
    wait_in(core, ns, "kubectl logs --previous to show the crashed run's output",
            lambda: kubectl(testbed, "-n", ns, "logs", "crasher", "--previous").stdout == "crasher ran\n", timeout=30)  # fmt: skip


def test_failing_readiness_probe_makes_the_pod_not_ready(testbed, core, ns):
    code = "open('/state/ready', 'w').close(); " + IDLE
    probe = "import os, sys; sys.exit(0 if os.path.exists('/state/ready') else 1)"
    core.create_namespaced_pod(ns, bare_pod(
        "flaky", ["python3", "-c", code], volumes=[{"name": "state", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "state", "mountPath": "/state"}],
                   "readinessProbe": {"exec": {"command": ["python3", "-c", probe]}, "periodSeconds": 1, "failureThreshold": 1}},
    ))  # fmt: skip
    running_pod(core, ns, "flaky")

    pod_python(testbed, ns, "flaky", "import os; os.remove('/state/ready')")

    def not_ready():
        pod = core.read_namespaced_pod("flaky", ns)
        ready = next(c for c in pod.status.conditions if c.type == "Ready")
        return pod if ready.status == "False" and ready.reason == "ContainersNotReady" else None

    pod = wait_in(core, ns, "the pod NotReady after its readiness probe fails", not_ready, timeout=30)
    s = container_status(pod)
    assert s.state.running and not s.ready and s.restart_count == 0, f"a readiness failure only marks NotReady: {s}"

    def unhealthy():
        events = core.list_namespaced_event(ns, field_selector="involvedObject.name=flaky").items
        return [e for e in events if e.reason == "Unhealthy" and (e.message or "").startswith("Readiness probe failed")]

    wait_in(core, ns, "an Unhealthy event (Readiness probe failed)", unhealthy, timeout=15)
    pod_python(testbed, ns, "flaky", "open('/state/ready', 'w').close()")
    running_pod(core, ns, "flaky", timeout=30)


STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
print("stubborn up", flush=True)
while True:
    time.sleep(1)
"""


class FollowedLog:
    """`kubectl logs -f POD`, read by a thread: the stream ends when the container does."""

    def __init__(self, testbed, ns: str, pod: str):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(  # noqa: S603
            [testbed.kubectl, "--kubeconfig", testbed.kubeconfig, "-n", ns, "logs", "-f", pod],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def text(self) -> str:
        return "".join(self.lines)

    def ended(self) -> bool:
        return not self.reader.is_alive()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def test_pod_deletion_honours_the_termination_grace_period(testbed, core, ns):
    """A process that ignores SIGTERM gets SIGTERM, then SIGKILL at the end of its grace period;
    one that exits on SIGTERM (the simulator) lets the deletion finish long before its own."""
    grace = 4
    core.create_namespaced_pod(ns, bare_pod("stubborn", ["python3", "-c", STUBBORN], terminationGracePeriodSeconds=grace))
    polite = grinder_pod("polite")
    polite["spec"]["terminationGracePeriodSeconds"] = 60
    core.create_namespaced_pod(ns, polite)
    running_pod(core, ns, "stubborn")
    running_pod(core, ns, "polite")

    follows = {name: FollowedLog(testbed, ns, name) for name in ("stubborn", "polite")}
    try:
        wait_in(core, ns, "the followed logs to start", lambda: "stubborn up" in follows["stubborn"].text()
                and "GRINDER_SIM_STARTED" in follows["polite"].text(), timeout=20)  # fmt: skip
        started = time.monotonic()
        for name in follows:
            core.delete_namespaced_pod(name, ns)
        took: dict[str, float] = {}

        def both_gone():
            for name in follows:
                if name not in took and gone(core, ns, name):
                    took[name] = time.monotonic() - started
            return len(took) == 2

        wait_in(core, ns, "both pods deleted", both_gone, timeout=grace + 40)
        try:  # what was logged before the end is what the assertions read; the end is not timed
            wait_for("the followed logs to end", lambda: all(f.ended() for f in follows.values()), timeout=10)
        except AssertionError:
            pass
    finally:
        for f in follows.values():
            f.close()

    stubborn, polite_log = follows["stubborn"].text(), follows["polite"].text()
    assert "SIGTERM ignored" in stubborn, f"the stubborn process never saw SIGTERM; its followed log:\n{stubborn}"
    assert grace - 0.5 <= took["stubborn"] < grace + 30, f"stubborn (grace {grace}s) deleted after {took['stubborn']:.1f}s"
    assert "GRINDER_SIM_STOPPING" in polite_log, f"the simulator did not stop on SIGTERM; its followed log:\n{polite_log[-2000:]}"
    assert took["polite"] < 20, f"the simulator exits on SIGTERM, yet its deletion (grace 60s) took {took['polite']:.1f}s"


# ---------------------------------------------------------------------------------------- 7. no way out

EGRESS_CHECK = """
import json, socket, sys, threading
results = {}
def connect(target):
    host, port = target.rsplit(":", 1)
    sock = socket.socket()
    sock.settimeout(2)
    try:
        sock.connect((host, int(port)))
        results[target] = "connected"
    except OSError as exc:
        results[target] = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()
threads = [threading.Thread(target=connect, args=(t,)) for t in sys.argv[1:]]
for t in threads: t.start()
for t in threads: t.join()
try:
    results["dns example.com"] = socket.gethostbyname("example.com")
except OSError as exc:
    results["dns example.com"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(results))
"""


def _outside_targets() -> list[str]:
    """Addresses off this machine: documentation and public ones, plus this machine's default
    gateway and upstream DNS server (which the machine itself may well reach)."""
    targets = ["192.0.2.1:53", "1.1.1.1:443", "8.8.8.8:53"]
    try:
        for line in open("/proc/net/route").read().splitlines()[1:]:  # noqa: SIM115
            fields = line.split()
            if fields[1] == "00000000" and fields[2] != "00000000":
                targets.append(f"{socket.inet_ntoa(int(fields[2], 16).to_bytes(4, 'little'))}:53")
        for line in open("/etc/resolv.conf").read().splitlines():  # noqa: SIM115
            if line.startswith("nameserver") and "." in line and not line.split()[1].startswith(("127.", "10.96.")):
                targets.append(f"{line.split()[1]}:53")
    except OSError:
        pass
    return sorted(set(targets) - {f"{NODE_IP}:53"})


def test_pods_reach_the_node_but_nothing_outside_the_machine(testbed, core, ns):
    core.create_namespaced_pod(ns, bare_pod("client", ["python3", "-c", IDLE]))
    running_pod(core, ns, "client")
    outside = _outside_targets()
    node = f"{NODE_IP}:{KUBELET_PORT}"
    done = kubectl(testbed, "-n", ns, "exec", "client", "--", "python3", "-c", EGRESS_CHECK, node, *outside)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen[node] == "connected", f"the pod cannot reach the node's kubelet at {node}: {seen[node]}"
    reached = {t: seen[t] for t in outside if seen[t] == "connected"}
    assert not reached, f"a pod reached addresses outside the machine: {sorted(reached)} (all results: {seen})"
    assert not seen["dns example.com"][0].isdigit(), f"a pod resolved example.com to {seen['dns example.com']}: DNS goes out"
