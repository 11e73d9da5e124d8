"""The process node (testbed/procnode) against the real control plane: pods run as local processes.

These tests look at the processes themselves (pids, signals, files), so they need the local
testbed's node `procnode`, not any cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.e2e

NODE = "procnode"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.3) -> T:
    """Poll probe until it returns something truthy; fail with `what` (and the last error) at the deadline."""
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
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z")
    except FileNotFoundError:
        return False


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 (loopback pod IPs)
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def core(k8s_api) -> client.CoreV1Api:
    api = client.CoreV1Api(k8s_api)
    nodes = [n.metadata.name for n in api.list_node().items]
    if NODE not in nodes:
        pytest.fail(f"no node {NODE!r} in the cluster (nodes: {nodes}); is testbed/procnode running (make testbed-up)?")
    return api


@pytest.fixture
def ns(core) -> Iterator[str]:
    name = f"e2e-node-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    wait_for("the default ServiceAccount", lambda: core.read_namespaced_service_account("default", name), timeout=30)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def echo_container(**extra) -> dict:
    return {"name": "echo", "image": "echo:local", "command": ["python3", "echo_server.py"], **extra}


def pod_body(name: str, containers: list[dict], **spec) -> dict:
    return {"metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": containers, "terminationGracePeriodSeconds": 5, **spec}}  # fmt: skip


def read_pod(core, ns: str, name: str):
    return core.read_namespaced_pod(name, ns)


def container_state(pod, name: str | None = None):
    statuses = pod.status.container_statuses or []
    return next((s for s in statuses if name is None or s.name == name), None)


def running_pod(core, ns: str, name: str, timeout: float = 30):
    def ready():
        pod = read_pod(core, ns, name)
        return pod if pod.status.phase == "Running" and all(s.ready for s in pod.status.container_statuses or [False]) else None

    return wait_for(f"pod {ns}/{name} Running and ready", ready, timeout=timeout)


def kubectl(testbed, *args: str) -> str:
    done = subprocess.run([testbed.kubectl, "--kubeconfig", testbed.kubeconfig, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


# ---------------------------------------------------------------------------------------- node


def test_node_is_registered_ready_untainted_with_a_fresh_lease(core, k8s_api):
    node = core.read_node(NODE)
    conditions = {c.type: c for c in node.status.conditions}
    assert conditions["Ready"].status == "True"
    assert all(conditions[t].status == "False" for t in ("MemoryPressure", "DiskPressure", "PIDPressure"))
    assert not node.spec.taints, node.spec.taints
    assert not node.spec.unschedulable
    assert {"type": "InternalIP", "address": "127.0.0.1"} in [a.to_dict() for a in node.status.addresses]
    assert node.status.daemon_endpoints.kubelet_endpoint.port == 10250
    assert node.status.node_info.kubelet_version == "v1.36.3"
    assert (node.status.allocatable["cpu"], node.status.allocatable["memory"], node.status.allocatable["pods"]) == ("8", "32Gi", "110")

    lease = client.CoordinationV1Api(k8s_api).read_namespaced_lease(NODE, "kube-node-lease")
    assert lease.spec.holder_identity == NODE
    age = (datetime.now(timezone.utc) - lease.spec.renew_time).total_seconds()
    assert age < 25, f"lease renewed {age:.0f}s ago (heartbeat every 10s)"


# ---------------------------------------------------------------------------------------- workloads


def test_deployment_gets_distinct_ips_logs_and_rolls_on_env_change(testbed, core, k8s_api, ns):
    apps = client.AppsV1Api(k8s_api)
    template = pod_body("web", [echo_container(
        env=[{"name": "GREETING", "value": "v1"}, {"name": "ECHO_VARS", "value": "GREETING,MY_NAME"},
             {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        ports=[{"name": "http", "containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
    )])  # fmt: skip
    apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template,
                 "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}},
    })  # fmt: skip

    def available(generation: int = 1):
        d = apps.read_namespaced_deployment("web", ns)
        s = d.status
        done = (s.observed_generation or 0) >= generation and s.updated_replicas == 2 and s.available_replicas == 2 and (s.replicas or 0) == 2
        return d if done and any(c.type == "Available" and c.status == "True" for c in s.conditions or []) else None

    wait_for("Deployment web Available with 2 replicas", available, timeout=60)
    pods = core.list_namespaced_pod(ns, label_selector="app=web").items
    ips = sorted(p.status.pod_ip for p in pods)
    assert len(set(ips)) == 2 and all(ip.startswith("127.1.") for ip in ips), ips
    answers = {p.metadata.name: get_json(f"http://{p.status.pod_ip}:8080/") for p in pods}
    for name, answer in answers.items():
        assert answer["hostname"] == name and answer["env"] == {"GREETING": "v1", "MY_NAME": name}
    old_pids = [a["pid"] for a in answers.values()]
    assert all(alive(pid) for pid in old_pids)

    first = pods[0].metadata.name
    all_lines = kubectl(testbed, "-n", ns, "logs", first).splitlines()
    assert all_lines[0].startswith("echo listening on 127.1."), all_lines[:3]
    tail = kubectl(testbed, "-n", ns, "logs", first, "--tail=2").splitlines()
    assert len(tail) == 2 and all(line.startswith("GET /") for line in tail), tail  # probe requests keep logging
    stamped = kubectl(testbed, "-n", ns, "logs", first, "--tail=1", "--timestamps").splitlines()
    assert len(stamped) == 1 and stamped[0].split(" ", 1)[0].endswith("Z") and stamped[0].split(" ", 1)[0][:4].isdigit()

    old_rs = {rs.metadata.name for rs in apps.list_namespaced_replica_set(ns).items}
    apps.patch_namespaced_deployment("web", ns, {"spec": {"template": {"spec": {"containers": [
        {"name": "echo", "env": [{"name": "GREETING", "value": "v2"}]}]}}}})  # fmt: skip

    def rolled():
        if available(generation=2) is None:
            return None
        new_rs = {rs.metadata.name for rs in apps.list_namespaced_replica_set(ns).items} - old_rs
        pods = [p for p in core.list_namespaced_pod(ns, label_selector="app=web").items if not p.metadata.deletion_timestamp]
        return pods if new_rs and len(pods) == 2 and all(p.metadata.owner_references[0].name in new_rs for p in pods) else None

    new_pods = wait_for("the rollout to a new ReplicaSet with the new env", rolled, timeout=90)
    for p in new_pods:
        assert get_json(f"http://{p.status.pod_ip}:8080/")["env"]["GREETING"] == "v2"
    wait_for("the old pods' processes to be gone", lambda: not any(alive(pid) for pid in old_pids), timeout=30)


def _job(batch, ns: str, name: str, code: str) -> None:
    batch.create_namespaced_job(ns, {
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": "echo:local", "command": ["python3", "-c", code]}]}}},
    })  # fmt: skip


def _job_condition(batch, ns: str, name: str) -> str | None:
    conditions = batch.read_namespaced_job(name, ns).status.conditions or []
    return next((c.type for c in conditions if c.type in ("Complete", "Failed") and c.status == "True"), None)


def test_jobs_complete_or_fail_with_the_real_exit_code(testbed, core, k8s_api, ns):
    batch = client.BatchV1Api(k8s_api)
    _job(batch, ns, "ok", "print('job says hi')")
    _job(batch, ns, "boom", "import sys; print('about to fail', flush=True); sys.exit(1)")

    assert wait_for("job ok to finish", lambda: _job_condition(batch, ns, "ok"), timeout=60) == "Complete"
    assert wait_for("job boom to finish", lambda: _job_condition(batch, ns, "boom"), timeout=60) == "Failed"

    ok_pod = core.list_namespaced_pod(ns, label_selector="job-name=ok").items[0]
    assert ok_pod.status.phase == "Succeeded"
    assert container_state(ok_pod).state.terminated.exit_code == 0
    assert container_state(ok_pod).state.terminated.reason == "Completed"
    assert core.read_namespaced_pod_log(ok_pod.metadata.name, ns) == "job says hi\n"

    boom_pod = core.list_namespaced_pod(ns, label_selector="job-name=boom").items[0]
    assert boom_pod.status.phase == "Failed"
    terminated = container_state(boom_pod).state.terminated
    assert (terminated.exit_code, terminated.reason) == (1, "Error")
    assert "about to fail" in kubectl(testbed, "-n", ns, "logs", "job/boom")


SA_SCRIPT = textwrap.dedent(
    """
    import os
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    config.load_kube_config()
    ns = open(os.path.join(os.path.dirname(os.environ["KUBECONFIG"]), "namespace")).read()
    api = client.CoreV1Api()
    api.list_namespaced_config_map(ns)
    print("configmaps=200", flush=True)
    try:
        api.list_namespaced_secret(ns)
        print("secrets=200", flush=True)
    except ApiException as exc:
        print(f"secrets={exc.status}", flush=True)
    review = client.AuthenticationV1Api().create_self_subject_review({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    print("user=" + review.status.user_info.username, flush=True)
    """
)


def test_pod_serviceaccount_gets_a_kubeconfig_with_exactly_its_rbac(core, k8s_api, ns):
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": "cm-reader"},
                                     "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]})  # fmt: skip
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "reader-cm"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
    })  # fmt: skip
    core.create_namespaced_pod(ns, pod_body("sa-check", [{"name": "main", "image": "echo:local", "command": ["python3", "-c", SA_SCRIPT]}],
                                            serviceAccountName="reader", restartPolicy="Never"))  # fmt: skip

    pod = wait_for("pod sa-check to finish", lambda: (p := read_pod(core, ns, "sa-check")).status.phase in ("Succeeded", "Failed") and p, timeout=60)
    out = core.read_namespaced_pod_log("sa-check", ns)
    assert pod.status.phase == "Succeeded", out
    assert out.splitlines() == ["configmaps=200", "secrets=403", f"user=system:serviceaccount:{ns}:reader"]


def test_deletion_sigterms_the_process_group_then_removes_the_pod(core, ns, tmp_path):
    marker = tmp_path / "term.txt"
    core.create_namespaced_pod(ns, pod_body("victim", [echo_container(env=[{"name": "ECHO_TERM_MARKER", "value": str(marker)}])],
                                            terminationGracePeriodSeconds=20))  # fmt: skip
    pod = running_pod(core, ns, "victim")
    pid = get_json(f"http://{pod.status.pod_ip}:8080/")["pid"]
    started = time.monotonic()
    core.delete_namespaced_pod("victim", ns)

    def gone():
        try:
            read_pod(core, ns, "victim")
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("pod victim to be deleted", gone, timeout=30)
    assert time.monotonic() - started < 15, "the process exits on SIGTERM: no need to wait for the 20s grace period"
    assert marker.read_text() == f"{pid} SIGTERM\n"
    assert not alive(pid)


def test_grace_period_ends_with_sigkill(core, ns):
    code = "import signal, time; signal.signal(signal.SIGTERM, lambda *a: print('ignoring SIGTERM', flush=True)); time.sleep(600)"
    core.create_namespaced_pod(ns, pod_body("stubborn", [{"name": "main", "image": "echo:local", "command": ["python3", "-c", code]}],
                                            terminationGracePeriodSeconds=2))  # fmt: skip
    wait_for("pod stubborn running", lambda: read_pod(core, ns, "stubborn").status.phase == "Running", timeout=30)
    pid = int(container_state(read_pod(core, ns, "stubborn")).container_id.rsplit("/", 1)[-1])
    assert alive(pid)
    started = time.monotonic()
    core.delete_namespaced_pod("stubborn", ns)
    wait_for("the stubborn process to be killed", lambda: not alive(pid), timeout=15)
    assert time.monotonic() - started >= 1.5, "SIGKILL came before the grace period"


# ---------------------------------------------------------------------------------------- status


def test_crash_loop_restarts_with_back_off_and_previous_logs(testbed, core, ns):
    code = "import os; print('run at', os.getpid(), flush=True); raise SystemExit(2)"
    core.create_namespaced_pod(ns, pod_body("crasher", [{"name": "main", "image": "echo:local", "command": ["python3", "-c", code]}]))

    def looping():
        s = container_state(read_pod(core, ns, "crasher"))
        waiting = s and s.state.waiting
        return s if waiting and waiting.reason == "CrashLoopBackOff" and s.restart_count >= 1 else None

    s = wait_for("CrashLoopBackOff after a restart", looping, timeout=30)
    assert s.last_state.terminated.exit_code == 2 and s.last_state.terminated.reason == "Error"
    pod = read_pod(core, ns, "crasher")
    assert pod.status.phase == "Running"  # restartPolicy Always: restarting, not failed
    previous = kubectl(testbed, "-n", ns, "logs", "crasher", "--previous")
    assert previous.startswith("run at "), previous


def test_unknown_image_and_missing_command_are_reported(core, ns):
    core.create_namespaced_pod(ns, pod_body("no-image", [{"name": "main", "image": "nope:local", "command": ["true"]}]))
    core.create_namespaced_pod(ns, pod_body("no-command", [{"name": "main", "image": "echo:local"}]))

    def waiting(name: str, reasons: tuple[str, ...]):
        s = container_state(read_pod(core, ns, name))
        return s.state.waiting if s and s.state.waiting and s.state.waiting.reason in reasons else None

    pull = wait_for("ErrImagePull", lambda: waiting("no-image", ("ErrImagePull", "ImagePullBackOff")), timeout=30)
    assert "nope:local" in pull.message
    create = wait_for("CreateContainerError", lambda: waiting("no-command", ("CreateContainerError",)), timeout=30)
    assert "no command" in create.message
    assert read_pod(core, ns, "no-image").status.phase == "Pending"


def test_readiness_and_liveness_probes_drive_status_and_restarts(core, ns, tmp_path):
    ready_file, unhealthy_file = tmp_path / "ready", tmp_path / "unhealthy"
    core.create_namespaced_pod(ns, pod_body("probed", [echo_container(
        env=[{"name": "ECHO_UNHEALTHY_FILE", "value": str(unhealthy_file)}],
        readinessProbe={"exec": {"command": ["test", "-f", str(ready_file)]}, "periodSeconds": 1},
        livenessProbe={"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2},
    )]))  # fmt: skip
    wait_for("pod probed running", lambda: read_pod(core, ns, "probed").status.phase == "Running", timeout=30)

    def readiness_failed():
        events = core.list_namespaced_event(ns, field_selector="involvedObject.name=probed").items
        return any(e.reason == "Unhealthy" and e.message.startswith("Readiness probe failed") for e in events)

    wait_for("a failed readiness probe (Unhealthy event)", readiness_failed, timeout=15)
    pod = read_pod(core, ns, "probed")
    assert not container_state(pod).ready
    ready = {c.type: c for c in pod.status.conditions}["Ready"]
    assert ready.status == "False" and ready.reason == "ContainersNotReady"

    ready_file.write_text("yes")
    running_pod(core, ns, "probed", timeout=15)

    unhealthy_file.write_text("yes")
    wait_for("the liveness probe to restart the container", lambda: container_state(read_pod(core, ns, "probed")).restart_count >= 1, timeout=30)
    unhealthy_file.unlink()
    s = container_state(running_pod(core, ns, "probed", timeout=30))
    assert s.last_state.terminated is not None and s.last_state.terminated.exit_code == 0  # echo exits 0 on SIGTERM


def test_init_containers_run_first_in_order(core, ns, tmp_path):
    out = tmp_path / "order.txt"
    step = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    body = pod_body("with-init", [{"name": "main", "image": "echo:local", "command": ["python3", "-c", step, str(out), "main"]}],
                    restartPolicy="Never",
                    initContainers=[{"name": f"init{i}", "image": "echo:local", "command": ["python3", "-c", step, str(out), f"init{i}"]} for i in (1, 2)])  # fmt: skip
    core.create_namespaced_pod(ns, body)
    pod = wait_for("pod with-init to succeed", lambda: (p := read_pod(core, ns, "with-init")).status.phase == "Succeeded" and p, timeout=60)
    assert out.read_text().splitlines() == ["init1", "init2", "main"]
    assert [s.state.terminated.reason for s in pod.status.init_container_statuses] == ["Completed", "Completed"]
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["Initialized"] == "True" and conditions["PodScheduled"] == "True"


def test_log_api_options_follow_since_and_limit(testbed, core, ns):
    code = "import time\nfor i in range(5): print('line', i, flush=True)\ntime.sleep(2)\nprint('bye', flush=True)"
    core.create_namespaced_pod(ns, pod_body("talker", [{"name": "main", "image": "echo:local", "command": ["python3", "-c", code]}],
                                            restartPolicy="Never"))  # fmt: skip
    wait_for("talker running", lambda: read_pod(core, ns, "talker").status.phase in ("Running", "Succeeded"), timeout=30)
    resp = core.read_namespaced_pod_log("talker", ns, follow=True, _preload_content=False, _request_timeout=30)
    followed = resp.read().decode()  # ends when the process ends
    assert followed == "line 0\nline 1\nline 2\nline 3\nline 4\nbye\n"

    wait_for("talker to succeed", lambda: read_pod(core, ns, "talker").status.phase == "Succeeded", timeout=30)
    assert core.read_namespaced_pod_log("talker", ns, tail_lines=2) == "line 4\nbye\n"
    assert core.read_namespaced_pod_log("talker", ns, limit_bytes=9) == "line 0\nli"
    stamped = core.read_namespaced_pod_log("talker", ns, timestamps=True).splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["line 0", "line 1", "line 2", "line 3", "line 4", "bye"]
    whole, _, fraction = stamped[-1].split(" ")[0].rstrip("Z").partition(".")
    bye_at = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc) + timedelta(microseconds=int(fraction.ljust(6, "0")[:6]))
    # 'bye' came 2 s after 'line 4': a window reaching just past 'bye' holds only 'bye'.
    window = int((datetime.now(timezone.utc) - bye_at).total_seconds()) + 1
    assert core.read_namespaced_pod_log("talker", ns, since_seconds=window) == "bye\n"
    assert kubectl(testbed, "-n", ns, "logs", "talker", f"--since-time={whole}Z") == "bye\n"  # the API's sinceTime


def test_host_path_volumes_are_created_or_checked_per_type(core, ns, tmp_path):
    made, missing = tmp_path / "made" / "here", tmp_path / "missing"
    write = "import sys; open(sys.argv[1] + '/out.txt', 'w').write('written')"
    core.create_namespaced_pod(ns, pod_body(
        "host-ok", [{"name": "main", "image": "echo:local", "command": ["python3", "-c", write, str(made)],
                     "volumeMounts": [{"name": "data", "mountPath": str(made)}]}],  # mountPath == path: no remapping
        restartPolicy="Never", volumes=[{"name": "data", "hostPath": {"path": str(made), "type": "DirectoryOrCreate"}}],
    ))  # fmt: skip
    core.create_namespaced_pod(ns, pod_body(
        "host-missing", [{"name": "main", "image": "echo:local", "command": ["true"]}],
        volumes=[{"name": "data", "hostPath": {"path": str(missing), "type": "Directory"}}],
    ))  # fmt: skip
    wait_for("pod host-ok to succeed", lambda: read_pod(core, ns, "host-ok").status.phase == "Succeeded", timeout=60)
    assert (made / "out.txt").read_text() == "written"

    def failed_mount():
        events = core.list_namespaced_event(ns, field_selector="involvedObject.name=host-missing").items
        return [e for e in events if e.reason == "FailedMount"]

    assert str(missing) in wait_for("a FailedMount event", failed_mount, timeout=30)[0].message
    pod = read_pod(core, ns, "host-missing")
    assert pod.status.phase == "Pending" and container_state(pod).state.waiting.reason == "ContainerCreating"
