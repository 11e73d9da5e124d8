"""Runbook 32 Phase 0 on the testbed (issue 3): preconditions before any step.

0.1 dirs set (else Halted ModelDirUnset), 0.2 preflight Job passes (else Halted PreflightFailed;
its configured/recommended/effective/mode parsed into status.threshold; rerun when the
model/eval dir values change), 0.3 starting state at takeover (else Halted
StartingStateInvalid). Halted changes nothing until a spec change re-arms.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from kubernetes import client
from support import wait_for

pytestmark = pytest.mark.e2e

MODEL_DIR = "GRINDER_FILL_MODEL_DIR"
EVAL_DIR = "GRINDER_FILL_PROB_EVAL_DIR"
ENFORCE = "GRINDER_FILL_MODEL_ENFORCE"
SYMBOLS = "GRINDER_FILL_PROB_ENFORCE_SYMBOLS"
AUTO = "GRINDER_FILL_PROB_AUTO_THRESHOLD"
MIN_BPS = "GRINDER_FILL_PROB_MIN_BPS"
TOKEN_ANNOTATION = "grinder.io/restart-token"
TESTBED_DATA = Path("/tmp/fillprob-testbed")
GOOD_EVAL = TESTBED_DATA / "grinder" / "eval"
WINDOWS = {"shadow": "3s", "canary": "3s", "expandBatch": "3s", "full": "3s", "autoThreshold": "3s"}


def spec(**extra) -> dict:
    return {"targetPhase": "Shadow", "observation": dict(WINDOWS), "prometheus": {"interval": "1s"},
            "progressDeadline": "2m", **extra}


def deployment(env) -> client.V1Deployment:
    return env.apps.read_namespaced_deployment(env.deployment, env.namespace)


def template(env) -> dict:
    return env.api.sanitize_for_serialization(deployment(env).spec.template)


def snapshot(env) -> tuple:
    """What 'nothing changed' means: the Deployment's generation and template, the rollout's
    state and history length."""
    dep = deployment(env)
    st = env.status()
    return (dep.metadata.generation, env.api.sanitize_for_serialization(dep.spec.template),
            st.get("state"), st.get("reason"), len(st.get("history", [])))


def hold(what: str, probe, seconds: float, every: float = 0.5):
    """Assert `probe()` keeps returning the same value for `seconds`."""
    first = probe()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(every)
        now = probe()
        assert now == first, f"{what} changed while it must not:\nbefore: {first}\nafter:  {now}"
    return first


def jobs(env) -> list[str]:
    return sorted(j.metadata.name for j in client.BatchV1Api(env.api).list_namespaced_job(env.namespace).items)


@pytest.fixture
def data_dir(grinder_env):
    """A scratch dir for this test's model/eval variants, under the dir the example grinder
    Deployment mounts from the node (hostPath /tmp/fillprob-testbed/grinder)."""
    path = TESTBED_DATA / "grinder" / f"e2e-{grinder_env.namespace}"
    path.mkdir(parents=True, exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- 0.1


def test_model_dir_unset_halts_and_leaves_the_deployment_alone(grinder_env):
    env = grinder_env
    env.apply_grinder({MODEL_DIR: None})
    env.wait_grinder_available()
    before = template(env)
    generation = deployment(env).metadata.generation
    env.apply_rollout(**spec())
    st = env.wait_state("Halted", timeout=60)
    assert st["reason"] == "ModelDirUnset", st
    assert MODEL_DIR in st["message"], st
    assert st["history"][-1]["action"] == "Halted" and st["history"][-1]["reason"] == "ModelDirUnset"
    env.wait_event("ModelDirUnset", "Warning")
    degraded = env.condition("Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ModelDirUnset", degraded
    hold("Deployment/rollout while Halted", lambda: snapshot(env), 4)
    assert template(env) == before
    assert deployment(env).metadata.generation == generation
    assert jobs(env) == []  # no preflight ran


# ----------------------------------------------------------------------------- 0.2


def test_preflight_failure_halts_with_nothing_enforced_until_a_spec_change(grinder_env, data_dir):
    env = grinder_env
    empty = data_dir / "empty-eval"
    empty.mkdir()
    env.apply_grinder({EVAL_DIR: str(empty)})
    env.wait_grinder_available()
    before = template(env)
    env.apply_rollout(**spec())
    st = env.wait_state("Halted", timeout=90)
    assert st["reason"] == "PreflightFailed", st
    halt = st["history"][-1]
    assert halt["action"] == "Halted" and halt["reason"] == "PreflightFailed", halt
    assert halt["evidence"]["exitCode"] == 1, halt
    assert any("eval_report" in line for line in halt["evidence"]["logLines"]), halt
    job = client.BatchV1Api(env.api).read_namespaced_job(halt["evidence"]["job"], env.namespace)
    assert (job.status.failed or 0) >= 1, job.status
    # Nothing enforced: the template is as it was (ENFORCE 0, no restart token).
    assert template(env) == before
    assert env.managed_env()[ENFORCE] == "0"
    assert TOKEN_ANNOTATION not in (deployment(env).spec.template.metadata.annotations or {})

    # Halted changes nothing further, not even when the Deployment is fixed behind its back.
    hold("Deployment/rollout while Halted", lambda: snapshot(env), 4)
    env.apps.patch_namespaced_deployment(env.deployment, env.namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "grinder", "env": [{"name": EVAL_DIR, "value": str(GOOD_EVAL)}]}]}}}})
    env.wait_grinder_available()
    fixed = snapshot(env)
    hold("rollout while Halted after the Deployment was fixed", lambda: snapshot(env), 4)
    assert fixed[2:] == ("Halted", "PreflightFailed", len(st["history"]))

    # A spec change re-arms: Phase 0 again (a new preflight Job), then Shadow.
    env.patch_spec(observation={**WINDOWS, "shadow": "4s"})
    st = env.wait_state("Passed", "Shadow", timeout=120)
    actions = [(h["action"], h["reason"]) for h in st["history"]]
    assert ("Rearmed", "Rearmed") in actions and ("PreflightPassed", "PreflightPassed") in actions, actions
    assert len(jobs(env)) == 2, jobs(env)
    assert env.managed_env()[ENFORCE] == "0"


def test_preflight_values_parsed_and_rerun_when_dirs_change(grinder_env, data_dir):
    env = grinder_env
    # configured 3000 vs the eval report's 2500: preflight runs with --auto-threshold, so it
    # reports effective=recommended=2500 mode=auto_apply; the Shadow pods then log
    # recommend_only with effective=configured=3000.
    env.apply_grinder({MIN_BPS: "3000"})
    env.wait_grinder_available()
    env.apply_rollout(**spec(minBps=3000))

    def after_preflight(s: dict) -> bool:
        return any(h["action"] == "PreflightPassed" for h in s.get("history", []))

    # Polled fast: the Shadow restart takes seconds, and until its pods are verified status
    # holds the preflight's four values.
    st = wait_for("preflight passed", lambda: (lambda s: s if after_preflight(s) else None)(env.status()),
                  90, every=0.2)
    assert st["state"] in ("Restarting", "Verifying"), st
    assert st["threshold"] == {"configuredBps": 3000, "recommendedBps": 2500, "effectiveBps": 2500,
                               "mode": "auto_apply"}, st
    passed = next(h for h in st["history"] if h["action"] == "PreflightPassed")
    assert {"configured_bps=3000", "recommended_bps=2500", "effective_bps=2500", "mode=auto_apply"} <= set(
        passed["evidence"]["logLines"]), passed
    st = env.wait_state("Passed", "Shadow", timeout=120)
    assert st["threshold"] == {"configuredBps": 3000, "recommendedBps": 2500, "effectiveBps": 3000,
                               "mode": "recommend_only"}, st
    assert jobs(env) == ["grinder-preflight-1"]

    # A new eval dir value (same report, another path): preflight reruns (a new Job), then the
    # step is redone.
    moved = data_dir / "eval-v2"
    shutil.copytree(GOOD_EVAL, moved)
    history_len = len(st["history"])
    env.apps.patch_namespaced_deployment(env.deployment, env.namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "grinder", "env": [{"name": EVAL_DIR, "value": str(moved)}]}]}}}})
    wait_for("second preflight Job", lambda: "grinder-preflight-2" in jobs(env), 60)
    st = env.wait_status("Shadow redone after the rerun", lambda s: s.get("state") == "Passed" and any(
        h["action"] == "StepPassed" for h in s["history"][history_len:]), 120)
    new = [(h["action"], h["reason"]) for h in st["history"][history_len:]]
    assert ("PreflightStarted", "ModelChanged") in new, new
    assert ("PreflightPassed", "PreflightPassed") in new, new
    assert ("RestartIssued", "ModelChanged") in new, new
    started = next(h for h in st["history"][history_len:] if h["action"] == "PreflightStarted")
    assert started["evidence"]["evalDir"] == str(moved), started
    assert env.managed_env()[ENFORCE] == "0"


# ----------------------------------------------------------------------------- 0.3


@pytest.mark.parametrize("overrides", [
    {ENFORCE: "1"},
    {SYMBOLS: "SYM1"},
], ids=["enforce-on", "allowlist-set"])
def test_not_in_starting_state_halts_with_nothing_changed(grinder_env, overrides):
    env = grinder_env
    env.apply_grinder(overrides)
    env.wait_grinder_available()
    before = template(env)
    generation = deployment(env).metadata.generation
    env.apply_rollout(**spec(targetPhase="Canary", canarySymbols=["SYM1", "SYM2"]))
    st = env.wait_state("Halted", timeout=60)
    assert st["reason"] == "StartingStateInvalid", st
    key = next(iter(overrides))
    assert key in st["message"], st
    assert st["history"][-1]["evidence"]["env"][key] == overrides[key], st["history"][-1]
    env.wait_event("StartingStateInvalid")
    hold("Deployment/rollout while Halted", lambda: snapshot(env), 4)
    assert template(env) == before
    assert deployment(env).metadata.generation == generation
    assert jobs(env) == []
