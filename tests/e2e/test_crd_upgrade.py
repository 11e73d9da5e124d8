"""Upgrading the FillProbRollout CRD with the chart, on a live cluster, keeps every rollout.

Helm never upgrades a chart's crds/ directory, so the CRD is upgraded by its own chart,
charts/fillprob-operator-crds (the CRD in templates/, with helm.sh/resource-policy: keep):
docs/install.md "Upgrading". This test does what that section says, starting from where an
installation of the previous chart is: the previous CRD
(tests/fixtures/previous-crd/fillprobrollouts.grinder.io@9553c41.yaml, i.e.
`git show 9553c41:crds/fillprobrollouts.grinder.io.yaml`), created by the old chart's crds/ and
so owned by no Helm release, with rollouts in flight:

  - "live": walked by a running operator to Shadow Passed; the operator keeps running through
    the upgrade and then walks it on to Canary under the new CRD;
  - "parked" (a namespace no operator watches): two rollouts whose status was written through
    the status subresource, one of them with a selector the previous CRD accepted and the new
    one refuses (a =~ value that is not a valid RE2 regex).

Then: `helm upgrade --install` without --take-ownership is refused and changes nothing; with
it the CRD becomes the canonical one (same schema, the RE2 rule in it) and every rollout keeps
its uid, spec, status and resourceVersion; a new rollout with an invalid regex is now refused;
a second `helm upgrade` is a plain upgrade; the live rollout walks on to Canary; the kept
rollout with the invalid regex refuses every write, its status too (not ratcheted), until its
spec is fixed, and the documented dry run (`kubectl replace --dry-run=server`) names it;
`helm uninstall` keeps the CRD and the rollouts.

Serial (tests/e2e/conftest.py SERIAL_FILES): the CRD is cluster-scoped and every other test
uses it. The CRD is never deleted (only replaced: previous, then upgraded), and at the end it
is the canonical one again without Helm's ownership metadata (support.ensure_crd), as the
other tests expect it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid

import pytest
import yaml
from chart_release import run, tool
from kubernetes import client
from support import (
    CRD_FILE, GROUP, PLURAL, REPO_ROOT, VERSION, OperatorProcess, delete_env, ensure_crd, make_env, wait_for,
)

pytestmark = pytest.mark.e2e

CRD_NAME = "fillprobrollouts.grinder.io"
CRD_CHART = REPO_ROOT / "charts" / "fillprob-operator-crds"
PREVIOUS_CRD = REPO_ROOT / "tests" / "fixtures" / "previous-crd" / "fillprobrollouts.grinder.io@9553c41.yaml"
RE2_RULE = "a =~ or !~ value must be a valid RE2 regular expression"
# Valid for the previous CRD's selector rule (any quoted value); an unclosed group is no RE2 regex.
BAD_REGEX_SELECTOR = 'job="grinder",pod=~"grinder-(.*"'
GOOD_SELECTOR = 'job="grinder",pod=~"grinder-.*"'


# ---------------------------------------------------------------------------- the CRD


def replace_crd(ext: client.ApiextensionsV1Api, manifest: dict) -> None:
    """PUT `manifest` over the CRD (never delete it: that would delete every rollout)."""

    def replaced() -> bool:
        body = copy.deepcopy(manifest)
        body["metadata"]["resourceVersion"] = ext.read_custom_resource_definition(CRD_NAME).metadata.resource_version
        try:
            ext.replace_custom_resource_definition(CRD_NAME, body)
        except client.ApiException as exc:
            if exc.status == 409:  # changed meanwhile: read again
                return False
            raise
        return True

    wait_for("CRD replaced", replaced, 30)
    wait_for("CRD Established", lambda: crd_established(ext), 30)


def crd_established(ext: client.ApiextensionsV1Api) -> bool:
    crd = ext.read_custom_resource_definition(CRD_NAME)
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def live_crd(api: client.ApiClient) -> dict:
    return client.CustomObjectsApi(api).get_cluster_custom_object(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", CRD_NAME
    )


def schemas(crd: dict) -> dict[str, dict]:
    return {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}


def selector_rules(crd: dict) -> list[dict]:
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec["properties"]["prometheus"]["properties"]["selector"]["x-kubernetes-validations"]


def dry_run_create(api: client.ApiClient, namespace: str, selector: str) -> client.ApiException | None:
    """Create a rollout with this selector (server-side dry run): None when accepted."""
    body = yaml.safe_load((REPO_ROOT / "examples" / "fillprobrollout.yaml").read_text())
    body["metadata"] = {"name": f"probe-{uuid.uuid4().hex[:6]}", "namespace": namespace}
    body["spec"]["prometheus"]["selector"] = selector
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, dry_run="All"
        )
    except client.ApiException as exc:
        if exc.status != 422:
            raise
        return exc
    return None


# ---------------------------------------------------------------------------- rollouts


def snapshot(custom: client.CustomObjectsApi, namespaces: list[str]) -> dict[tuple[str, str], dict]:
    found = {}
    for ns in namespaces:
        for obj in custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]:
            meta = obj["metadata"]
            found[(ns, meta["name"])] = {
                "uid": meta["uid"], "generation": meta["generation"], "resourceVersion": meta["resourceVersion"],
                "spec": obj["spec"], "status": obj.get("status"),
            }
    return found


def helm(*args: str, check: bool = True) -> str:
    proc = run(tool("helm"), *args, check=check, timeout=180)
    return proc.stdout + proc.stderr


# ---------------------------------------------------------------------------- the test


def test_crd_chart_upgrades_the_previous_crd_and_keeps_live_rollouts(k8s_api, crd_installed, tmp_path_factory):
    ext = client.ApiextensionsV1Api(k8s_api)
    custom = client.CustomObjectsApi(k8s_api)
    core = client.CoreV1Api(k8s_api)
    canonical = yaml.safe_load(CRD_FILE.read_text())
    previous = yaml.safe_load(PREVIOUS_CRD.read_text())
    assert RE2_RULE not in json.dumps(previous) and RE2_RULE in json.dumps(canonical)

    live = make_env(k8s_api, "crd-upgrade-live")
    parked = make_env(k8s_api, "crd-upgrade-parked")
    suffix = uuid.uuid4().hex[:6]
    release, release_ns = f"fpo-crds-{suffix}", f"crd-upgrade-helm-{suffix}"
    core.create_namespace({"metadata": {"name": release_ns}})
    try:
        # --- where an installation of the previous chart is: its CRD, owned by no release ----
        replace_crd(ext, previous)
        wait_for("the previous CRD in effect (a bad =~ regex accepted)",
                 lambda: dry_run_create(k8s_api, parked.namespace, BAD_REGEX_SELECTOR) is None, 30)
        assert "app.kubernetes.io/managed-by" not in (live_crd(k8s_api)["metadata"].get("labels") or {})

        parked_names = ("steady", "legacy-selector")
        for name, selector in zip(parked_names, (GOOD_SELECTOR, BAD_REGEX_SELECTOR)):
            body = parked.rollout_body(targetPhase="Canary", prometheus={"selector": selector, "interval": "2s"})
            body["metadata"]["name"] = name
            custom.create_namespaced_custom_object(GROUP, VERSION, parked.namespace, PLURAL, body)

        live.operator = OperatorProcess(live.namespace, tmp_path_factory.mktemp("operator-logs")).start()
        live.apply_grinder()
        live.wait_grinder_available()
        live.apply_rollout(targetPhase="Shadow", observation={"shadow": "5s", "canary": "5s"})
        walked = live.wait_state("Passed", "Shadow", timeout=120)
        for name in parked_names:  # a status as the operator writes it, through /status
            status = {**copy.deepcopy(walked), "observedGeneration": 1}
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, parked.namespace, PLURAL, name, {"status": status}
            )
        namespaces = [live.namespace, parked.namespace]
        before = snapshot(custom, namespaces)
        assert len(before) == 3 and all(r["status"] and r["status"].get("state") for r in before.values()), before
        print(f"before the upgrade: {sorted(before)}")

        # --- without --take-ownership Helm refuses the CRD it did not create ------------------
        refused = run(tool("helm"), "upgrade", "--install", release, str(CRD_CHART),
                      "--namespace", release_ns, "--wait", "--timeout", "60s", check=False)
        assert refused.returncode != 0, refused.stdout
        assert "invalid ownership metadata" in refused.stderr or "cannot be imported" in refused.stderr, refused.stderr
        assert selector_rules(live_crd(k8s_api)) == selector_rules(previous), "a refused install changed the CRD"
        # Refused before anything is recorded: no (failed) release to clean up.
        assert helm("list", "--all", "--short", "--namespace", release_ns).strip() == ""

        # --- the documented upgrade (docs/install.md "Upgrading") ------------------------------
        out = helm("upgrade", "--install", release, str(CRD_CHART), "--namespace", release_ns,
                   "--take-ownership", "--wait", "--timeout", "120s")
        print(out.splitlines()[0] if out else "")
        wait_for("the upgraded CRD Established", lambda: crd_established(ext), 30)

        crd = live_crd(k8s_api)
        assert schemas(crd) == schemas(canonical), "the live CRD's schema is not the canonical one"
        assert any(r["message"].startswith(RE2_RULE) for r in selector_rules(crd))
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

        # The API server serves the new schema a moment after the CRD changed.
        rejected = wait_for("a new rollout with an invalid =~ regex refused",
                            lambda: dry_run_create(k8s_api, parked.namespace, BAD_REGEX_SELECTOR), 30)
        assert RE2_RULE in rejected.body and "spec.prometheus.selector" in rejected.body, rejected.body
        assert dry_run_create(k8s_api, parked.namespace, GOOD_SELECTOR) is None

        after = snapshot(custom, namespaces)
        assert after == before, f"rollouts changed by the CRD upgrade:\nbefore {before}\nafter {after}"

        # --- the next upgrade is a plain `helm upgrade` of the release ----------------------------
        out = helm("upgrade", release, str(CRD_CHART), "--namespace", release_ns, "--wait", "--timeout", "120s")
        assert "REVISION: 2" in out, out
        assert schemas(live_crd(k8s_api)) == schemas(canonical)
        assert snapshot(custom, namespaces) == before

        # --- the live rollout walks on under the new CRD ------------------------------------------
        live.patch_spec(targetPhase="Canary")
        st = live.wait_state("Passed", "Canary", timeout=150)
        assert st["observedGeneration"] == live.get_rollout()["metadata"]["generation"]
        assert live.managed_env()["GRINDER_FILL_MODEL_ENFORCE"] == "1"

        # --- a kept rollout that the new CRD refuses: there, readable, but no write to it is
        # accepted, not even to its status (this rule's failure is not ratcheted), until its spec
        # is fixed. docs/install.md "Upgrading" finds such rollouts with a server-side dry run.
        with pytest.raises(client.ApiException) as status_refused:
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, parked.namespace, PLURAL, "legacy-selector", {"status": {"state": "Halted"}}
            )
        assert status_refused.value.status == 422 and RE2_RULE in status_refused.value.body
        listed = run(tool("kubectl"), "get", "fpr", "-n", parked.namespace, "-o", "json").stdout
        check = subprocess.run(  # noqa: S603 - the documented check, on this namespace only
            [tool("kubectl"), "replace", "--dry-run=server", "-f", "-"],
            input=listed, capture_output=True, text=True, timeout=60,
        )
        print(f"kubectl replace --dry-run=server: rc={check.returncode}\n{check.stdout}{check.stderr}")
        assert check.returncode != 0
        assert '"legacy-selector" is invalid' in check.stderr and RE2_RULE in check.stderr, check.stderr
        assert "steady replaced (server dry run)" in check.stdout and "steady" not in check.stderr
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, parked.namespace, PLURAL, "legacy-selector", {"spec": {"prometheus": {"selector": GOOD_SELECTOR}}}
        )
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, parked.namespace, PLURAL, "legacy-selector", {"status": {"state": "Halted"}}
        )

        # --- uninstalling the CRD chart keeps the CRD, so keeps every rollout -------------------
        manifest = helm("get", "manifest", release, "--namespace", release_ns)
        assert "helm.sh/resource-policy: keep" in manifest, "refusing to uninstall a release that would delete the CRD"
        out = helm("uninstall", release, "--namespace", release_ns, "--wait")
        assert "kept due to the resource policy" in out, out
        ext.read_custom_resource_definition(CRD_NAME)  # still there
        assert set(snapshot(custom, namespaces)) == set(before)
    except AssertionError:
        if live.operator:
            print(live.operator.tail(120))
        raise
    finally:
        # The CRD as the other tests expect it: canonical, no Helm ownership (replaced, never deleted).
        ensure_crd(k8s_api)
        delete_env(live)
        delete_env(parked)
        try:
            core.delete_namespace(release_ns)  # takes the release's records along, never the CRD
        except client.ApiException:
            pass
