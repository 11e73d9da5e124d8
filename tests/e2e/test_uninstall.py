"""`helm uninstall` while FillProbRollouts are live, then delete their namespace: the namespace is
gone within 30 s (nothing waits for the uninstalled operator), and the uninstall left the grinder
Deployment exactly as the last rung set it (env and restart token; docs/install.md, "Uninstalling").

The operator puts no finalizer on a FillProbRollout, and removes `grinder.io/finalizer` from the
ones an older version finalized (shown here with a rollout created carrying it).

Not `serial`: the release's names (namespaces, ClusterRoles) are its own, as in test_chart.py.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from chart_release import ChartRelease, run, tool, wait_rollout
from kubernetes import client
from support import GROUP, PLURAL, REPO_ROOT, VERSION, wait_for

pytestmark = pytest.mark.e2e

FINALIZER = "grinder.io/finalizer"
NAMESPACE_GONE_WITHIN = 30.0


def documented_restore_patch() -> str:
    """The patch docs/install.md ("Uninstalling") gives to put the starting state back."""
    text = (REPO_ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    found = re.search(r"kubectl -n trading patch deploy/grinder -p '(.*?)'", text, re.DOTALL)
    assert found, "docs/install.md no longer shows the restore patch"
    json.loads(found.group(1))
    return found.group(1)


@pytest.fixture
def release(k8s_api, crd_installed):
    rel = ChartRelease(k8s_api, "uninst")
    yield rel
    rel.teardown()


def finalizers(obj: dict) -> list[str]:
    return obj["metadata"].get("finalizers") or []


def test_uninstall_with_live_rollouts_then_delete_their_namespace(release: ChartRelease, k8s_api):
    release.install()
    env = release.env()
    custom = client.CustomObjectsApi(k8s_api)
    apps = client.AppsV1Api(k8s_api)

    # An "old" rollout, finalized as operator versions before this one did: the running
    # operator takes the finalizer off.
    legacy = env.rollout_body(deploymentName="no-such-deployment")
    legacy["metadata"].update(name="legacy", finalizers=[FINALIZER])
    custom.create_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, legacy)
    wait_for("the operator to remove grinder.io/finalizer from the legacy rollout",
             lambda: FINALIZER not in finalizers(
                 custom.get_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, "legacy")), 60)

    # A live rollout, mid-walk: past Shadow, observing Canary (a long window: still live at
    # uninstall), so the Deployment's env is the Canary rung's, not the starting state.
    env.apply_grinder()
    env.wait_grinder_available()
    starting = env.managed_env()
    env.apply_rollout(targetPhase="Canary", observation={"shadow": "5s", "canary": "30m"},
                      prometheus={"interval": "2s"})
    st = wait_rollout(env, release, "Canary Observing",
                      lambda s: s.get("step") == "Canary" and s.get("state") == "Observing", timeout=240)
    assert finalizers(env.get_rollout()) == [], env.get_rollout()["metadata"]
    managed, full = env.managed_env(), env.grinder_env()
    template = apps.read_namespaced_deployment(env.deployment, env.namespace).spec.template.metadata
    token = (template.annotations or {}).get("grinder.io/restart-token")
    assert token, "the operator has not restarted the Deployment"
    assert managed != starting and managed.get("GRINDER_FILL_PROB_ENFORCE_SYMBOLS"), (managed, starting)
    print(f"before uninstall: {st['phase']}/{st['step']}/{st['state']} restart-token={token} managed env={managed}")

    # helm uninstall, the rollouts still there.
    started = time.monotonic()
    run(tool("helm"), "uninstall", release.release, "--namespace", release.namespace, "--wait", "--timeout", "120s")
    release.installed = False
    wait_for("the operator pod gone", lambda: not release.pods(), 90)
    print(f"helm uninstall {release.release}: {time.monotonic() - started:.1f}s")
    assert not release.leftovers(), release.leftovers()

    # The uninstall changed nothing of the Deployment, and the rollouts are still there, unblocked.
    assert env.managed_env() == managed
    assert env.grinder_env() == full
    template = apps.read_namespaced_deployment(env.deployment, env.namespace).spec.template.metadata
    assert (template.annotations or {}).get("grinder.io/restart-token") == token
    left = custom.list_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL)["items"]
    assert sorted(o["metadata"]["name"] for o in left) == ["grinder", "legacy"]
    assert [finalizers(o) for o in left] == [[], []], [o["metadata"] for o in left]

    # The documented way back to the starting state (the operator is gone: nothing halts).
    run(tool("kubectl"), "-n", env.namespace, "patch", f"deploy/{env.deployment}", "-p", documented_restore_patch())
    assert env.managed_env() == starting, (env.managed_env(), starting)
    template = apps.read_namespaced_deployment(env.deployment, env.namespace).spec.template.metadata
    assert "grinder.io/restart-token" not in (template.annotations or {})
    print(f"restored with the documented patch: managed env={env.managed_env()}")

    # Delete their namespace: gone within 30 s.
    started = time.monotonic()
    release.core.delete_namespace(release.watched)

    def namespace_gone() -> bool:
        try:
            release.core.read_namespace(release.watched)
        except client.ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    try:
        wait_for(f"namespace {release.watched} gone", namespace_gone, NAMESPACE_GONE_WITHIN)
    except AssertionError:
        ns = release.core.read_namespace(release.watched)
        raise AssertionError(f"namespace {release.watched} still {ns.status.phase} after "
                             f"{NAMESPACE_GONE_WITHIN:.0f}s: {ns.status.conditions}") from None
    print(f"namespace {release.watched} with 2 FillProbRollouts deleted after the uninstall: "
          f"gone in {time.monotonic() - started:.1f}s")
