"""The Helm chart, installed for real: the operator pod, under the chart's ServiceAccount and
nothing else, walks a grinder Deployment through Shadow and Canary (its RBAC is enough), and
`kubectl auth can-i` shows that RBAC is no more than that (no Secrets, no other namespace, no
wildcards). Then `helm uninstall` leaves nothing behind. Installed with the chart's defaults:
the kubelet enforces its securityContext (checked from inside the container) and mounts the
webhook token from its Secret.
"""

from __future__ import annotations

import re

import pytest
import yaml
from chart_release import CHART, ChartRelease, wait_rollout
from kubernetes import client

pytestmark = pytest.mark.e2e

# Run inside the operator's container: what the kubelet let the process do.
SECURITY_PROBE = """
import errno, os
def write(path):
    try:
        open(path, "w").close(); os.unlink(path); return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
token = os.environ.get("FILLPROB_WEBHOOK_TOKEN_FILE", "")
cap = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:")][0]
print(f"uid={os.getuid()} gid={os.getgid()} root_write={write('/probe')} tmp_write={write('/tmp/probe')}"
      f" token_file={'ok' if token and open(token).read().strip() else 'missing'} cap_eff={cap}")
"""


@pytest.fixture
def release(k8s_api, crd_installed):
    rel = ChartRelease(k8s_api, "chart")
    yield rel
    rel.teardown()


def test_chart_operator_walks_to_canary_with_only_its_rbac(release: ChartRelease, k8s_api):
    release.install()
    pod = release.pod()
    assert pod.spec.service_account_name == release.fullname
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert pod.spec.containers[0].image == f"fillprob-operator:{app_version}"

    # The process runs in-cluster with the ServiceAccount's token, not the admin's certificate.
    assert release.whoami(release.serviceaccount_token()) == release.sa_user()
    # The kubelet enforces the chart's securityContext: a non-root uid, a read-only root
    # filesystem (only the /tmp emptyDir is writable), the webhook token from the Secret volume.
    probe = release.exec("python3", "-c", SECURITY_PROBE)
    facts = dict(line.split("=", 1) for line in probe.split())
    assert facts["uid"] == "65532" and facts["gid"] == "65532", probe
    assert facts["root_write"] == "EROFS", probe
    assert facts["tmp_write"] == "ok", probe
    assert facts["token_file"] == "ok", probe
    assert facts["cap_eff"] == "0000000000000000", probe
    # What an SRE does to look at it: kubectl port-forward to its metrics port.
    assert "fillprob_rollout" in release.get_through_port_forward(8080, "/metrics")

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
