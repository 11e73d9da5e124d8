"""The Helm chart, installed for real: the operator pod, under the chart's ServiceAccount and
nothing else, walks a grinder Deployment through Shadow and Canary (its RBAC is enough), and
`kubectl auth can-i` shows that RBAC is no more than that (no Secrets, no other namespace, no
wildcards). Then `helm uninstall` leaves nothing behind.

Not covered on the testbed: the pod's securityContext (runAsNonRoot, runAsUser 65532,
readOnlyRootFilesystem) is accepted by the API server but not enforced by the process node,
which runs every container as the node's own user (testbed/procnode/README.md, "Not supported").
"""

from __future__ import annotations

import re

import pytest
from chart_release import ChartRelease, run, tool, wait_rollout
from kubernetes import client

pytestmark = pytest.mark.e2e


@pytest.fixture
def release(k8s_api, crd_installed):
    rel = ChartRelease(k8s_api, "chart")
    yield rel
    rel.teardown()


def test_chart_operator_walks_to_canary_with_only_its_rbac(release: ChartRelease, k8s_api):
    release.install()
    pod = release.pod()
    assert pod.spec.service_account_name == release.fullname
    assert pod.spec.containers[0].image == "fillprob-operator:local"

    # The process runs with the ServiceAccount's token, not the admin's certificate.
    kubeconfig = release.process_kubeconfig()
    if kubeconfig is not None:  # the local testbed (the node's state dir is readable)
        who = run(tool("kubectl"), "--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
        assert who.stdout.strip() == release.sa_user(), who.stdout
        print(f"operator process KUBECONFIG={kubeconfig} -> {who.stdout.strip()}")

    env = release.env()
    env.apply_grinder()
    env.wait_grinder_available()
    env.apply_rollout(targetPhase="Canary", observation={"shadow": "5s", "canary": "5s"},
                      prometheus={"interval": "2s"})
    st = wait_rollout(env, release, "Canary Passed",
                      lambda s: s.get("step") == "Canary" and s.get("state") == "Passed", timeout=240)
    steps = [(h.get("step"), h.get("action")) for h in st.get("history", [])]
    assert any(step == "Shadow" and action == "StepPassed" for step, action in steps), steps
    assert env.managed_env() == {
        "GRINDER_FILL_MODEL_ENFORCE": "1",
        "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "SYM1,SYM2",
        "GRINDER_FILL_PROB_AUTO_THRESHOLD": "0",
        "GRINDER_FILL_PROB_MIN_BPS": "2500",
    }
    assert env.grinder_env()["GRINDER_LOG_LEVEL"] == "info"
    assert st["threshold"]["mode"] == "recommend_only"
    # Events were posted (events create) and nothing was forbidden along the way.
    assert env.events(), "no Events on the FillProbRollout"
    logs = release.logs(400)
    # 403 as a status, not inside a log timestamp such as 17:52:47,403
    assert "Forbidden" not in logs and not re.search(r"(?<![,.\d])403(?!\d)", logs), logs

    # ... and not more than enough.
    ns, watched, other = release.namespace, release.watched, release.other
    assert release.can_i("patch", "deployments", "-n", watched)  # the positive control
    assert release.can_i("patch", "fillprobrollouts.grinder.io/status", "-n", watched)
    checks = {
        "list secrets (all namespaces)": ("list", "secrets", "--all-namespaces"),
        "get secrets in the watched ns": ("get", "secrets", "-n", watched),
        "list secrets in the watched ns": ("list", "secrets", "-n", watched),
        "get its own webhook Secret": ("get", f"secret/{release.fullname}-webhook", "-n", ns),
        "get secrets in another ns": ("get", "secrets", "-n", other),
        "patch deployments in another ns": ("patch", "deployments", "-n", other),
        "patch deployments in its own ns": ("patch", "deployments", "-n", ns),
        "patch deployments cluster-wide": ("patch", "deployments", "--all-namespaces"),
        "patch fillprobrollouts in another ns": ("patch", "fillprobrollouts.grinder.io", "-n", other),
        "create jobs in another ns": ("create", "jobs", "-n", other),
        "wildcard verb+resource (all namespaces)": ("*", "*", "--all-namespaces"),
        "wildcard verb+resource in the watched ns": ("*", "*", "-n", watched),
        "any verb on deployments in the watched ns": ("*", "deployments", "-n", watched),
        "delete deployments in the watched ns": ("delete", "deployments", "-n", watched),
        "create pods in the watched ns": ("create", "pods", "-n", watched),
        "pods/exec in the watched ns": ("create", "pods/exec", "-n", watched),
        "update roles in the watched ns": ("update", "roles", "-n", watched),
    }
    allowed = [what for what, args in checks.items() if release.can_i(*args)]
    assert not allowed, f"the chart's ServiceAccount may: {allowed}"

    # No rule of the release's roles uses a wildcard.
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    selector = f"app.kubernetes.io/instance={release.release}"
    roles = rbac.list_cluster_role(label_selector=selector).items + rbac.list_namespaced_role(
        watched, label_selector=selector).items
    assert roles, "the release created no (Cluster)Roles"
    for role in roles:
        for rule in role.rules:
            for field, values in rule.to_dict().items():
                assert "*" not in (values or []), f"{role.kind} {role.metadata.name}: wildcard {field} in {rule}"
    assert not rbac.list_namespaced_role(other, label_selector=selector).items

    release.uninstall()
