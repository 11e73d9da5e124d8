"""Crash safety: `kill -9` the operator in every state; the restarted one resumes from status.

It never restarts the Deployment an extra time (one ReplicaSet revision per step, one restart
token each), never starts a second preflight Job, never loses history, and never repeats a
rollback it already applied.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

import pytest
from support import Env, holds_for, wait_for

pytestmark = pytest.mark.e2e

RESTART_TOKEN = "grinder.io/restart-token"
REVISION = "deployment.kubernetes.io/revision"
INTERVAL = 2.0


def replica_sets(env: Env) -> list[tuple[int, str | None]]:
    """(revision, restart token) of every ReplicaSet of the grinder Deployment, oldest first."""
    out = []
    for rs in env.apps.list_namespaced_replica_set(env.namespace, label_selector="app=grinder").items:
        if not any(o.kind == "Deployment" and o.name == env.deployment for o in rs.metadata.owner_references or []):
            continue
        annotations = rs.spec.template.metadata.annotations or {}
        out.append((int((rs.metadata.annotations or {}).get(REVISION, "0")), annotations.get(RESTART_TOKEN)))
    return sorted(out)


def deployment_revision(env: Env) -> int:
    dep = env.apps.read_namespaced_deployment(env.deployment, env.namespace)
    return int((dep.metadata.annotations or {}).get(REVISION, "0"))


def jobs(env: Env) -> list[str]:
    return sorted(j.metadata.name for j in client_batch(env).list_namespaced_job(env.namespace).items)


def client_batch(env: Env):
    from kubernetes import client

    return client.BatchV1Api(env.api)


def kill_when(env: Env, what: str, predicate: Callable[[dict], bool], timeout: float = 150) -> dict:
    """Poll status fast; SIGKILL the operator the moment `predicate(status)` holds."""
    st = wait_for(what, lambda: (lambda s: s if predicate(s) else None)(env.status()), timeout, every=0.1)
    env.operator.kill9()
    print(f"kill -9 in {st.get('step')}/{st.get('state')} (history {len(st.get('history', []))}, "
          f"revision {deployment_revision(env)}, jobs {jobs(env)})")
    return env.status()  # what the dead operator left behind


def assert_history_kept(before: dict, after: dict) -> None:
    old, new = before.get("history", []), after.get("history", [])
    assert new[: len(old)] == old, f"history rewritten after restart:\nbefore {old}\nafter {new}"


def actions(st: dict) -> list[str]:
    return [h["action"] for h in st.get("history", [])]


def test_kill9_in_each_state_resumes_without_extra_restart(grinder_env):
    env = grinder_env
    env.apply_grinder(replicas=2)
    env.wait_grinder_available()
    assert deployment_revision(env) == 1
    # Verifying normally lasts less than one evaluation (the new pods are scraped by the time
    # the rollout completes): a selector that matches no pod holds Shadow in Verifying until
    # the test fixes it, so the operator can be killed there.
    no_pods = f'namespace="{env.namespace}",pod=~"nothing-.*"'
    env.apply_rollout(
        targetPhase="Expand",
        canarySymbols=["SYM1", "SYM2"],
        expandBatches=[["SYM3", "SYM4"]],
        safeSymbols=["SYM1"],
        observation={"shadow": "6s", "canary": "6s", "expandBatch": "6s"},
        prometheus={"interval": f"{INTERVAL:.0f}s", "selector": no_pods},
    )

    def fix_selector() -> None:
        holds_for(2 * INTERVAL, lambda: env.status().get("state") == "Verifying", "Verifying after the restart")
        env.patch_spec(prometheus={"selector": f'namespace="{env.namespace}",pod=~"{env.deployment}-.*"'})

    kills: list[tuple[str, Callable[[dict], Any], Callable[[], None] | None]] = [
        ("Preflight", lambda s: s.get("state") == "Preflight" and (s.get("preflight") or {}).get("jobName"), None),
        ("Shadow/Restarting", lambda s: s.get("step") == "Shadow" and s.get("state") == "Restarting", None),
        ("Shadow/Verifying", lambda s: s.get("step") == "Shadow" and s.get("state") == "Verifying", fix_selector),
        ("Canary/Observing", lambda s: s.get("step") == "Canary" and s.get("state") == "Observing", None),
        ("Expand 1/1/Restarting", lambda s: s.get("step") == "Expand 1/1" and s.get("state") == "Restarting", None),
    ]
    for what, predicate, then in kills:
        before = kill_when(env, what, predicate)
        env.operator.start()
        if then is not None:
            then()
        # The restarted operator got past the state it was killed in, from status.
        after = env.wait_status(f"progress after the kill in {what}",
                                lambda s: len(s.get("history", [])) > len(before.get("history", [])), 120)
        assert_history_kept(before, after)

    st = env.wait_state("Passed", "Expand 1/1", timeout=120)
    print("history:", actions(st))
    # One preflight Job, ever.
    assert len(jobs(env)) == 1, jobs(env)
    assert actions(st).count("PreflightStarted") == 1, actions(st)
    # Exactly one restart (one ReplicaSet revision, one token) per step: Shadow, Canary, Expand 1.
    rss = replica_sets(env)
    print("replica sets (revision, token):", rss)
    assert [r for r, _ in rss] == [1, 2, 3, 4], rss
    tokens = [t for _, t in rss[1:]]
    assert len(set(tokens)) == 3 and all(tokens), rss
    assert deployment_revision(env) == 4
    assert actions(st).count("RestartIssued") == 3, actions(st)
    assert actions(st).count("StepPassed") == 3, actions(st)
    assert st["restart"]["token"] == tokens[-1]
    assert env.managed_env()["GRINDER_FILL_PROB_ENFORCE_SYMBOLS"] == "SYM1,SYM2,SYM3,SYM4"


def test_kill9_after_rollback_never_repeats_it(grinder_env):
    env = grinder_env
    env.apply_grinder(replicas=2)
    env.wait_grinder_available()
    env.apply_rollout(
        targetPhase="Canary",
        canarySymbols=["SYM1", "SYM2"],
        observation={"shadow": "4s", "canary": "10m"},
        prometheus={"interval": f"{INTERVAL:.0f}s"},
    )
    env.wait_state("Observing", "Canary", timeout=150)
    revision = deployment_revision(env)
    assert revision == 3  # created, Shadow, Canary
    env.sim_fault({"cbTrip": True})
    before = kill_when(env, "RolledBack (R1)", lambda s: s.get("state") == "RolledBack", timeout=60)
    assert before["lastRollback"]["playbook"] == "R1", before["lastRollback"]
    env.operator.start()

    # The restarted operator finishes the rollback's restart (if the crash came first) and verifies it.
    st = env.wait_status(
        "R1's pods verified after the restart",
        lambda s: s.get("state") == "RolledBack" and "RollbackVerified" in actions(s),
        timeout=120,
    )
    assert_history_kept(before, st)

    def once() -> bool:
        s = env.status()
        return bool(
            s.get("state") == "RolledBack"
            and s.get("lastRollback") == before["lastRollback"]
            and actions(s).count("RollbackR1") == 1
            and not [a for a in actions(s) if a.startswith("Rollback") and a not in ("RollbackR1", "RollbackVerified")]
            and deployment_revision(env) == revision + 1
            and env.managed_env().get("GRINDER_FILL_MODEL_ENFORCE") == "0"
        )

    holds_for(4 * INTERVAL, once, "R1 applied exactly once, one more revision, state RolledBack")
    st = env.status()
    print("history:", actions(st))
    print("replica sets (revision, token):", replica_sets(env))
    assert [r for r, _ in replica_sets(env)] == [1, 2, 3, 4]
    # The restarted process did not count the dead one's rollback again.
    text = wait_for("operator /metrics", env.operator.metrics, 30)
    counted = [
        line for line in text.splitlines()
        if line.startswith("fillprob_rollout_rollbacks_total{") and f'namespace="{env.namespace}"' in line
    ]
    print("rollbacks_total after restart:", counted or "(no series)")
    assert all(float(re.split(r"\s+", line)[-1]) == 0 for line in counted), counted
