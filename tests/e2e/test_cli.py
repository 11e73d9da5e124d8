"""`kubectl fillprob` against the testbed: every command, and its exit codes.

The plugin runs as a real subprocess (the installed `kubectl-fillprob` console script, and once
through `kubectl fillprob` plugin discovery) with the testbed's KUBECONFIG. FILLPROB_PLUGIN
points them at another install (a wheel's venv).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from support import wait_for

pytestmark = pytest.mark.e2e

# FILLPROB_PLUGIN=/path/to/kubectl-fillprob runs these tests against another install of the
# plugin, e.g. the console script of a wheel installed into a clean venv (tests/integration/
# test_wheel.py builds one; docs/plugin.md): every command, against the testbed, from the wheel.
PLUGIN = Path(os.environ.get("FILLPROB_PLUGIN") or Path(sys.executable).parent / "kubectl-fillprob")
VENV_BIN = PLUGIN.parent  # on PATH for kubectl's plugin discovery


def plugin_cmd() -> list[str]:
    if PLUGIN.exists() or os.environ.get("FILLPROB_PLUGIN"):  # a FILLPROB_PLUGIN that is not there fails
        return [str(PLUGIN)]
    return [sys.executable, "-m", "fillprob_operator.cli"]


def fillprob(*args: str, kubeconfig: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if kubeconfig is not None:
        env["KUBECONFIG"] = kubeconfig
    return subprocess.run([*plugin_cmd(), *args], capture_output=True, text=True, env=env, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_every_command_against_a_running_rollout(grinder_env, testbed, tmp_path):
    env = grinder_env
    ns = env.namespace
    env.apply_grinder()
    env.wait_grinder_available()
    # Canary's window is long: the rollout stays at Canary/Observing while the plugin is exercised.
    body = env.rollout_body(targetPhase="Canary", observation={"shadow": "3s", "canary": "10m"})
    env.custom.create_namespaced_custom_object("grinder.io", "v1alpha1", ns, "fillprobrollouts", body)
    env.wait_state("Observing", "Canary", timeout=180)

    # status: text, -o json, -o yaml, the list, and kubectl's plugin discovery
    text = ok(fillprob("status", "grinder", "-n", ns)).stdout
    assert "State:       Observing   step Canary" in text
    assert any(line.lstrip().startswith(">") and "Canary" in line for line in text.splitlines())
    assert "Timeline:" in text and "StepPassed" in text and "Conditions:" in text
    as_json = json.loads(ok(fillprob("status", "grinder", "-n", ns, "-o", "json")).stdout)
    assert as_json["kind"] == "FillProbRollout" and as_json["status"]["step"] == "Canary"
    assert "managedFields" not in as_json["metadata"]
    as_yaml = yaml.safe_load(ok(fillprob("status", "grinder", "-n", ns, "-o", "yaml")).stdout)
    assert as_yaml["status"]["state"] == "Observing"
    listing = ok(fillprob("status", "-n", ns)).stdout
    assert listing.splitlines()[0].split()[:5] == ["NAME", "TARGET", "PHASE", "STEP", "STATE"]
    assert "grinder" in listing and "Observing" in listing
    kubectl = shutil.which(testbed.kubectl) or testbed.kubectl
    discovered = subprocess.run([kubectl, "fillprob", "status", "-n", ns], capture_output=True, text=True,
                                env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
                                timeout=60)
    assert discovered.returncode == 0 and "Observing" in discovered.stdout, discovered.stderr

    # plan --live: the file against the cluster's status
    manifest = tmp_path / "rollout.yaml"
    manifest.write_text(yaml.safe_dump(body))
    plan = ok(fillprob("plan", "-f", str(manifest), "--live")).stdout
    assert "1. Shadow   observe >= 3s   [live: done]" in plan
    assert "2. Canary   observe >= 10m   [live: NOW, Observing]" in plan
    assert "the cluster's spec already matches this file" in plan
    body["spec"]["deploymentName"] = "another"  # immutable: the update would be refused
    manifest.write_text(yaml.safe_dump(body))
    refused = fillprob("plan", "-f", str(manifest), "--live")
    assert refused.returncode == 2 and "deploymentName" in refused.stderr, refused

    # status --watch: output at once, a redraw on change, Ctrl-C (SIGINT) exits 0
    out_path = tmp_path / "watch.out"
    with open(out_path, "w") as out:
        watch = subprocess.Popen([*plugin_cmd(), "status", "grinder", "-n", ns, "--watch"], stdout=out,
                                 stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        wait_for("the first --watch frame", lambda: "State:" in out_path.read_text(), 30)
        env.annotate({"e2e/poke": "1"})  # a new resourceVersion: a second frame
        wait_for("a redraw after a change", lambda: out_path.read_text().count("State:") >= 2, 30)
        watch.send_signal(signal.SIGINT)
        assert watch.wait(20) == 0, out_path.read_text()[-2000:]
    finally:
        if watch.poll() is None:
            watch.kill()

    # suspend / resume
    ok(fillprob("suspend", "grinder", "-n", ns, "--reason", "e2e maintenance", "--wait"))
    assert env.get_rollout()["spec"]["suspend"] is True
    text = ok(fillprob("status", "grinder", "-n", ns)).stdout
    assert "State:       Suspended" in text and "(e2e maintenance)" in text
    ok(fillprob("resume", "grinder", "-n", ns, "--wait"))
    obj = env.get_rollout()
    assert obj["spec"]["suspend"] is False and obj["status"]["state"] != "Suspended"
    assert "grinder.io/suspend-reason" not in (obj["metadata"].get("annotations") or {})

    # rollback: the operator applies it and records who and why
    proc = ok(fillprob("rollback", "grinder", "R1", "-n", ns, "--reason", "e2e: plugin rollback", "--wait"))
    assert "RollbackR1" in proc.stdout
    st = env.wait_state("RolledBack", timeout=60)
    entry = next(h for h in reversed(st["history"]) if h["action"] == "RollbackR1")
    assert entry["reason"] == "ManualRollback"
    assert entry["evidence"]["why"] == "e2e: plugin rollback"
    assert entry["evidence"]["manager"].startswith("kubectl-fillprob:")
    assert st["lastRollback"]["playbook"] == "R1"
    assert env.managed_env()["GRINDER_FILL_MODEL_ENFORCE"] == "0"
    assert "grinder.io/rollback" not in (env.get_rollout()["metadata"].get("annotations") or {})


def _no_rights_kubeconfig(k8s_api, testbed, namespace: str, path: Path) -> str:
    """A kubeconfig for a fresh ServiceAccount that has no RBAC rights (TokenRequest)."""
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "cli-no-rights"}})
    token = wait_for("a token for the ServiceAccount", lambda: core.create_namespaced_service_account_token(
        "cli-no-rights", namespace, {"spec": {"expirationSeconds": 600}}).status.token, 30)
    admin = yaml.safe_load(Path(testbed.kubeconfig).read_text())
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "cli-no-rights", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "testbed", "user": "cli-no-rights",
                                                "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_exit_codes_missing_forbidden_unreachable(k8s_api, testbed, crd_installed, tmp_path):
    from support import delete_env, make_env

    env = make_env(k8s_api, "test-cli-errors")
    try:
        ns = env.namespace
        missing = fillprob("status", "nope", "-n", ns)
        assert missing.returncode == 3 and "not found" in missing.stderr, missing
        assert fillprob("rollback", "nope", "R3", "-n", ns, "--reason", "x").returncode == 3
        assert fillprob("suspend", "nope", "-n", ns).returncode == 3

        no_rights = _no_rights_kubeconfig(k8s_api, testbed, ns, tmp_path / "sa.kubeconfig")
        forbidden = fillprob("status", "-n", ns, kubeconfig=no_rights)
        assert forbidden.returncode == 5 and "forbidden" in forbidden.stderr, forbidden
        assert fillprob("rollback", "grinder", "R1", "-n", ns, "--reason", "x", kubeconfig=no_rights).returncode == 5

        admin = yaml.safe_load(Path(testbed.kubeconfig).read_text())
        server = admin["clusters"][0]["cluster"]["server"]
        admin["clusters"][0]["cluster"]["server"] = server.rsplit(":", 1)[0] + ":1"  # nothing listens on port 1
        unreachable_path = tmp_path / "unreachable.kubeconfig"
        unreachable_path.write_text(yaml.safe_dump(admin))
        unreachable = fillprob("status", "-n", ns, kubeconfig=str(unreachable_path), timeout=60)
        assert unreachable.returncode == 4 and "cannot reach" in unreachable.stderr, unreachable
        assert fillprob("status", kubeconfig="/nonexistent").returncode == 4
    finally:
        delete_env(env)
