"""Everyday change (API.md "Everyday change", notes/design.md): the ladder keeps its promises
while people, GitOps and the cluster change things under it.

One test per bug users reproduced on a real cluster, each in its own namespace with its own
operator process (the `grinder_env` fixture), windows of seconds and a 1s evaluation interval:

 1. `kubectl set env` at Canary: a narrower env is kept and halts (EnvChangedOutside, who and
    what in evidence), never climbs; a wider one is restored, then halts.
 2. a lower targetPhase while a preflight reruns is applied at once; the preflight failing
    while ENFORCE=1 then applies R1 (PreflightFailed) and halts.
 3. a selector the API server accepts (broken regex) does not stop the guarding.
 4. changing the current step's window moves observationEndsAt (never before now).
 5. R2 never enforces a symbol removed from the spec.
 6. Deployment deleted and recreated: DeploymentMissing, then the rung re-applied, verified,
    the window started again.
 7. an unreadable pod log is missing data (never a rollback, never RestartTimedOut); and a
    restart the operator could not issue (patch denied, operator down) does not time out.
 8. suspend: the window pauses, a no-go is reported at once and acted on at resume, and a
    RolledBack rollout stays rolled back after a suspend toggle.
 9. alert rollbacks narrow or do nothing: an R1 alert older than an automatic R3 is applied,
    its duplicate changes nothing, a widening one is RollbackSkipped.
10. a model dir change while RolledBack reruns the preflight; the state stays RolledBack.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from kubernetes import client
from fillprob_operator.adapters.kubernetes import KUBELET_LOG_FILE_ERROR
from support import REPO_ROOT, Env, free_port, holds_for, http, wait_for

pytestmark = pytest.mark.e2e

ENFORCE = "GRINDER_FILL_MODEL_ENFORCE"
SYMBOLS = "GRINDER_FILL_PROB_ENFORCE_SYMBOLS"
AUTO = "GRINDER_FILL_PROB_AUTO_THRESHOLD"
MIN_BPS = "GRINDER_FILL_PROB_MIN_BPS"
MODEL_DIR = "GRINDER_FILL_MODEL_DIR"
EVAL_DIR = "GRINDER_FILL_PROB_EVAL_DIR"
EXAMPLE_MODEL_DIR = "/tmp/fillprob-testbed/grinder/model"  # examples/grinder-deployment.yaml
TOKEN_ANNOTATION = "grinder.io/restart-token"

CANARY = ["SYM1", "SYM2"]
BATCH1 = ["SYM3", "SYM4"]
BATCH2 = ["SYM5", "SYM6"]
FAST = "4s"  # windows of the steps below the one under test
HOLD = "10m"  # the step under test stays Observing
INTERVAL = 1.0  # spec.prometheus.interval, seconds
# "Within one evaluation interval": one interval, plus the operator's own round trip
# (read Deployment/pods/logs, query Prometheus, write status) on a loaded testbed.
DETECT = INTERVAL + 9
WALK = 150  # seconds allowed to walk up to the step under test

CANARY_ENV = {ENFORCE: "1", SYMBOLS: "SYM1,SYM2", AUTO: "0", MIN_BPS: "2500"}
POD_LOGS_DIR = REPO_ROOT / ".testbed" / "run" / "node" / "pod-logs"  # the kubelet's podLogsDir (testbed/node.sh)


# ------------------------------------------------------------------------------- helpers


def spec(target: str, **overrides: Any) -> dict:
    body = {
        "targetPhase": target,
        "canarySymbols": CANARY,
        "expandBatches": [BATCH1, BATCH2],
        "safeSymbols": ["SYM1"],
        "minBps": 2500,
        "observation": {"shadow": FAST, "canary": FAST, "expandBatch": FAST, "full": FAST, "autoThreshold": FAST},
        "prometheus": {"interval": f"{INTERVAL:.0f}s"},
        "progressDeadline": "2m",
    }
    body.update(overrides)
    return body


def start(env: Env, rollout_spec: dict, env_overrides: dict | None = None, replicas: int = 1) -> None:
    env.apply_grinder(env_overrides, replicas=replicas)
    env.wait_grinder_available()
    env.apply_rollout(**rollout_spec)


def metrics_in(st: dict) -> bool:
    return any(c["type"] == "MetricsAvailable" and c["status"] == "True" for c in st.get("conditions", []))


def observing(env: Env, step: str, timeout: float = WALK) -> dict:
    """`step` Observing with its metrics in (the new pods verified and scraped)."""
    st = env.wait_status(f"{step} Observing with metrics",
                         lambda s: s.get("state") == "Observing" and s.get("step") == step and metrics_in(s), timeout)
    env.wait_grinder_available()
    return st


def managed(env: Env) -> dict:
    """The managed keys on the container; "" for a key set empty (the API server drops `value: ""`)."""
    return {k: "" if v is None else v for k, v in env.managed_env().items()}


def inject(env: Env, fault: dict) -> None:
    results = wait_for(f"fault {fault} accepted", lambda: env.sim_fault(fault), 30)
    assert results, "no running grinder pod to inject into"


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def rfc3339(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def condition(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def history(st: dict, *, action: str | None = None, reason: str | None = None) -> list[dict]:
    return [h for h in st.get("history", [])
            if (action is None or h.get("action") == action) and (reason is None or h.get("reason") == reason)]


def kubectl(testbed, *args: str) -> str:
    """The real kubectl (its field manager is `kubectl-<verb>`, e.g. kubectl-set)."""
    done = subprocess.run([testbed.kubectl, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def template_token(env: Env) -> str | None:
    dep = env.apps.read_namespaced_deployment(env.deployment, env.namespace)
    return (dep.spec.template.metadata.annotations or {}).get(TOKEN_ANNOTATION)


def dep_generation(env: Env) -> int:
    return env.apps.read_namespaced_deployment(env.deployment, env.namespace).metadata.generation


def rolled_back(env: Env, playbook: str, timeout: float = 60, reason: str | None = None) -> dict:
    return env.wait_status(
        f"RolledBack by {playbook}" + (f" ({reason})" if reason else ""),
        lambda s: s.get("state") == "RolledBack" and (s.get("lastRollback") or {}).get("playbook") == playbook
        and (reason is None or s["lastRollback"].get("reason") == reason),
        timeout,
    )


def warning_event(env: Env, reason: str, timeout: float = 20) -> list:
    return wait_for(f"a Warning Event {reason}",
                    lambda: [e for e in env.events() if e.type == "Warning" and e.reason == reason], timeout)


def env_changed_entry(st: dict) -> dict:
    entries = history(st, reason="EnvChangedOutside")
    assert entries, f"no history entry with reason EnvChangedOutside: {[(h['action'], h['reason']) for h in st.get('history', [])]}"
    return entries[-1]


def never_above(env: Env, st_predicate: Callable[[dict], bool], env_predicate: Callable[[dict], bool],
                seconds: float, what: str) -> None:
    """Status and Deployment env both keep holding for `seconds` (polled)."""
    holds_for(seconds, lambda: st_predicate(env.status()) and env_predicate(managed(env)), what)


def restart_operator(env: Env, extra_env: dict[str, str]) -> None:
    assert env.operator is not None
    env.operator.stop()
    env.operator.extra_env.update(extra_env)
    env.operator.start()


def jobs(env: Env) -> list[str]:
    return sorted(j.metadata.name for j in client.BatchV1Api(env.api).list_namespaced_job(env.namespace).items)


# ------------------------------------------------------------------ 1. env changed outside


def test_narrower_env_change_by_kubectl_is_kept_and_halts(grinder_env, testbed):
    """`kubectl set env ... ENFORCE=0` at Canary: within one interval Halted/EnvChangedOutside,
    history names who (kubectl-set) and what (ENFORCE 1 -> 0); the narrower env is kept (never
    re-widened) and the operator never climbs to Expand, though Canary's window elapses."""
    env = grinder_env
    start(env, spec("Expand", observation={"shadow": FAST, "canary": "15s", "expandBatch": HOLD}))
    st = observing(env, "Canary")
    assert managed(env) == CANARY_ENV
    window_ends = ts(st["observationEndsAt"])
    history_before = len(st["history"])

    t0 = time.monotonic()
    kubectl(testbed, "set", "env", f"deployment/{env.deployment}", "-n", env.namespace, f"{ENFORCE}=0")
    st = env.wait_status("Halted with reason EnvChangedOutside",
                         lambda s: s.get("state") == "Halted" and s.get("reason") == "EnvChangedOutside", DETECT + 5)
    detected = time.monotonic() - t0
    print(f"kubectl set env {ENFORCE}=0 -> Halted EnvChangedOutside in {detected:.1f}s")
    assert detected <= DETECT, f"detected after {detected:.1f}s, want within one interval ({INTERVAL}s) + slack"
    # status.phase is the rung whose env is applied: Canary's, or what ENFORCE=0 reads as.
    assert st["phase"] in ("Canary", "Shadow") and not st["step"].startswith("Expand"), st
    entry = env_changed_entry(st)
    evidence = entry["evidence"]
    assert "kubectl-set" in evidence["changedBy"], evidence  # who: the field manager
    assert evidence["changed"] == {ENFORCE: {"from": "1", "to": "0"}}, evidence  # what
    assert condition(st, "Degraded").get("status") == "True", st["conditions"]
    assert condition(st, "Degraded").get("reason") == "EnvChangedOutside", st["conditions"]
    assert condition(st, "Ready").get("status") == "False", st["conditions"]
    warning_event(env, "EnvChangedOutside")
    assert not st.get("lastRollback"), st["lastRollback"]  # a person's lever, not a rollback

    # Kept, never re-widened; never climbs, well past the end of Canary's window.
    narrowed = {**CANARY_ENV, ENFORCE: "0"}
    assert managed(env) == narrowed
    hold = max(0.0, (window_ends - utcnow()).total_seconds()) + 6
    never_above(env, lambda s: s.get("state") == "Halted" and s.get("phase") in ("Canary", "Shadow"),
                lambda m: m == narrowed, hold, "Halted below Expand with ENFORCE=0 kept")
    st = env.status()
    assert not [h for h in st["history"] if h["step"].startswith("Expand")], st["history"][-5:]
    new = st["history"][history_before:]
    assert not [h for h in new if h["action"] == "StepPassed"], f"Canary passed on a window the env was not its: {new}"


def test_wider_env_change_is_restored_then_halts(grinder_env, testbed):
    """`kubectl set env ... ENFORCE_SYMBOLS=SYM1,SYM2,SYM3` at Canary is an ungated widening:
    the operator restores Canary's allowlist at once (a restart), then halts EnvChangedOutside."""
    env = grinder_env
    start(env, spec("Expand", observation={"shadow": FAST, "canary": HOLD, "expandBatch": HOLD}))
    observing(env, "Canary")
    token = template_token(env)

    t0 = time.monotonic()
    kubectl(testbed, "set", "env", f"deployment/{env.deployment}", "-n", env.namespace, f"{SYMBOLS}=SYM1,SYM2,SYM3")
    wait_for("Canary's allowlist restored on the Deployment",
             lambda: managed(env) == CANARY_ENV and template_token(env) != token, DETECT + 5, every=0.2)
    restored = time.monotonic() - t0
    st = env.wait_status("Halted with reason EnvChangedOutside",
                         lambda s: s.get("state") == "Halted" and s.get("reason") == "EnvChangedOutside", 30)
    print(f"widened allowlist restored in {restored:.1f}s, then {st['state']}/{st['reason']}")
    assert restored <= DETECT, restored
    entry = env_changed_entry(st)
    evidence = entry["evidence"]
    assert "kubectl-set" in evidence["changedBy"], evidence
    assert evidence["changed"] == {SYMBOLS: {"from": "SYM1,SYM2", "to": "SYM1,SYM2,SYM3"}}, evidence
    assert st["step"] == "Canary" and st["enforcedSymbols"] == CANARY, st
    warning_event(env, "EnvChangedOutside")
    never_above(env, lambda s: s.get("state") == "Halted", lambda m: m == CANARY_ENV, 5,
                "Halted with Canary's env restored")


# ------------------------------------------------------------- 2. down moves never wait


def test_lower_target_during_preflight_rerun_is_applied_then_failed_preflight_rolls_back(grinder_env):
    """At Full, GRINDER_FILL_MODEL_DIR changes (preflight reruns) and at once targetPhase is
    lowered to Canary: Canary's env within a tick, not after the preflight. The preflight then
    fails while ENFORCE=1: R1 (PreflightFailed), then Halted. Full's env never comes back.

    The preflight command sleeps first (so the down move is seen while it runs) and refuses any
    model dir but the approved one, so the new value (same dir, written with a trailing slash:
    the pods still resolve their threshold) fails only the preflight."""
    env = grinder_env
    preflight = {
        "command": ["sh", "-c",
                    f'sleep 12; if [ "$GRINDER_FILL_MODEL_DIR" != "{EXAMPLE_MODEL_DIR}" ]; then '
                    'echo "FAIL model_dir: $GRINDER_FILL_MODEL_DIR is not the approved model"; '
                    'echo "PREFLIGHT_FAIL failed=1"; exit 1; fi; '
                    'exec python3 -m scripts.preflight_fill_prob --model "$GRINDER_FILL_MODEL_DIR" '
                    '--eval "$GRINDER_FILL_PROB_EVAL_DIR" --auto-threshold'],
        "timeout": "2m",
    }
    start(env, spec("Full", expandBatches=[], preflight=preflight,
                    observation={"shadow": FAST, "canary": FAST, "full": HOLD}))
    st = observing(env, "Full", timeout=WALK + 30)
    full_env = {ENFORCE: "1", SYMBOLS: "", AUTO: "0", MIN_BPS: "2500"}
    assert managed(env) == full_env
    run_before = (st.get("preflight") or {}).get("run", 0)

    new_dir = EXAMPLE_MODEL_DIR + "/"
    env.apps.patch_namespaced_deployment(env.deployment, env.namespace, {"spec": {"template": {"spec": {
        "containers": [{"name": "grinder", "env": [{"name": MODEL_DIR, "value": new_dir}]}]}}}})
    env.wait_status("the preflight rerun started",
                    lambda s: (s.get("preflight") or {}).get("run", 0) > run_before, DETECT + 5)
    t0 = time.monotonic()
    env.patch_spec(targetPhase="Canary")
    wait_for("Canary's env applied while the preflight runs", lambda: managed(env) == CANARY_ENV, DETECT + 2, every=0.2)
    print(f"targetPhase Canary applied {time.monotonic() - t0:.1f}s after the patch, preflight still running")
    st = env.status()
    assert (st.get("preflight") or {}).get("state") == "Running", st.get("preflight")
    assert st["step"] == "Canary", st["step"]
    lowered = [h for h in history(st, action="RestartIssued") if h["step"] == "Canary"]
    assert lowered and lowered[-1]["reason"] == "TargetLowered", st["history"][-6:]

    # The preflight fails while Canary enforces: R1 with reason PreflightFailed, then Halted.
    seen_envs: list[dict] = []

    def halted() -> dict | None:
        m = managed(env)
        if m not in seen_envs:
            seen_envs.append(m)
        s = env.status()
        return s if s.get("state") == "Halted" and (s.get("lastRollback") or {}).get("playbook") == "R1" else None

    st = wait_for("R1 (PreflightFailed) then Halted", halted, 60, every=0.3)
    assert st["lastRollback"]["reason"] == "PreflightFailed", st["lastRollback"]
    entry = history(st, action="RollbackR1")[-1]
    assert entry["reason"] == "PreflightFailed", entry
    assert (st.get("preflight") or {}).get("state") == "Failed", st.get("preflight")
    wait_for("R1 on the Deployment", lambda: managed(env) == {**CANARY_ENV, ENFORCE: "0"}, 20)
    warning_event(env, "PreflightFailed")
    # Never left at Full unguarded: Full's env never came back after the down move.
    assert full_env not in seen_envs, seen_envs
    never_above(env, lambda s: s.get("state") == "Halted", lambda m: m[ENFORCE] == "0" and m[SYMBOLS] == "SYM1,SYM2",
                4, "Halted with enforcement off")


# ---------------------------------------------------------- 3. accepted spec is read spec


def test_selector_with_broken_regex_never_stops_guarding(grinder_env):
    """`pod=~"grinder-(.*"` passes the CRD's matcher syntax; either the API server rejects it
    (a CRD that validates the regex, with a message naming the problem) or the operator reads
    it. In both cases guarding continues: a CB trip in the log still rolls Canary back (R1)."""
    env = grinder_env
    start(env, spec("Canary", observation={"shadow": FAST, "canary": HOLD}))
    st = observing(env, "Canary")
    generation = st["observedGeneration"]
    broken = f'namespace="{env.namespace}",pod=~"{env.deployment}-(.*"'
    try:
        patched = env.patch_spec(prometheus={"interval": f"{INTERVAL:.0f}s", "selector": broken})
    except client.ApiException as exc:
        body = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body)
        print(f"API server rejected the selector: {exc.status} {body[:500]}")
        assert exc.status == 422, (exc.status, body)
        assert "selector" in body and any(w in body.lower() for w in ("regex", "regular expression", "re2")), body
        assert env.get_rollout()["metadata"]["generation"] == generation
    else:
        generation = patched["metadata"]["generation"]
        st = env.wait_status("the new generation read (no InvalidSpec)",
                             lambda s: s.get("observedGeneration") == generation, DETECT + 5)
        print(f"accepted; operator state {st['state']}, conditions "
              f"{[(c['type'], c['status'], c['reason']) for c in st['conditions']]}")
        assert all(c["reason"] != "InvalidSpec" for c in st["conditions"]), st["conditions"]
        holds_for(3, lambda: all(c["reason"] != "InvalidSpec" for c in env.status().get("conditions", [])),
                  "no InvalidSpec for a spec the API server accepted")

    # Still guarding: a CB trip (its log line; the broken selector may blind Prometheus queries).
    inject(env, {"cbTrip": True})
    st = rolled_back(env, "R1", timeout=DETECT + 20)
    assert st["lastRollback"]["reason"] == "CircuitBreakerTripped", st["lastRollback"]
    wait_for("R1 on the Deployment", lambda: managed(env) == {**CANARY_ENV, ENFORCE: "0"}, 20)


# ------------------------------------------------------------------ 4. windows follow the spec


def test_changing_the_current_window_moves_observation_ends_at(grinder_env):
    """Canary observed with a 20s window: raised to 90s mid-window, observationEndsAt moves to
    start + 90s (same start); lowered to 2s (below what is already observed), it is never set
    before now, and the step passes."""
    env = grinder_env
    start(env, spec("Canary", observation={"shadow": FAST, "canary": "20s"}))
    st = observing(env, "Canary")
    started = ts(st["observationStartedAt"])
    assert (ts(st["observationEndsAt"]) - started).total_seconds() >= 20, st

    patched = env.patch_spec(observation={"shadow": FAST, "canary": "90s"})
    generation = patched["metadata"]["generation"]
    st = env.wait_status("observationEndsAt moved to start + 90s",
                         lambda s: s.get("observedGeneration") == generation
                         and (ts(s["observationEndsAt"]) - started).total_seconds() >= 90, DETECT + 5)
    span = (ts(st["observationEndsAt"]) - started).total_seconds()
    print(f"raised: observationEndsAt - observationStartedAt = {span:.0f}s")
    assert span <= 90 + 10, span  # the new window (plus at most a little paused time)
    assert ts(st["observationStartedAt"]) == started, "the window restarted instead of following the spec"
    assert st["state"] == "Observing" and st["step"] == "Canary", st

    holds_for(2, lambda: env.status().get("state") == "Observing", "Canary observed a little longer")
    lowered_at = utcnow()
    patched = env.patch_spec(observation={"shadow": FAST, "canary": "2s"})
    generation = patched["metadata"]["generation"]
    st = env.wait_status("the lowered window taken in", lambda s: s.get("observedGeneration") == generation, DETECT + 5)
    ends = ts(st["observationEndsAt"])
    print(f"lowered at {rfc3339(lowered_at)}: observationEndsAt {st['observationEndsAt']}, state {st['state']}")
    assert ends >= lowered_at - timedelta(seconds=1), (st["observationEndsAt"], rfc3339(lowered_at))  # whole seconds
    assert ends <= lowered_at + timedelta(seconds=DETECT + 2), st["observationEndsAt"]  # it did move earlier
    st = env.wait_state("Passed", "Canary", timeout=DETECT + 10)
    assert not st.get("lastRollback")


# ------------------------------------------------------------- 5. last known-good follows spec


def test_r2_never_enforces_a_symbol_removed_from_the_spec(grinder_env):
    """Full observed after Expand 1/1 [SYM3, SYM4] passed (last known-good SYM1..SYM4); SYM4 is
    then removed from expandBatches. A CB trip at Full is R2: ENFORCE_SYMBOLS=SYM1,SYM2,SYM3,
    never SYM4."""
    env = grinder_env
    start(env, spec("Full", expandBatches=[BATCH1],
                    observation={"shadow": FAST, "canary": FAST, "expandBatch": FAST, "full": HOLD}))
    st = observing(env, "Full", timeout=WALK + 30)
    assert st["lastKnownGoodSymbols"] == CANARY + BATCH1, st["lastKnownGoodSymbols"]
    full_env = {ENFORCE: "1", SYMBOLS: "", AUTO: "0", MIN_BPS: "2500"}
    assert managed(env) == full_env

    patched = env.patch_spec(expandBatches=[["SYM3"]])
    generation = patched["metadata"]["generation"]
    st = env.wait_status("the new spec read", lambda s: s.get("observedGeneration") == generation, DETECT + 5)
    assert st["state"] in ("Observing", "Passed") and st["step"] == "Full", st  # Full's env did not change
    env.wait_grinder_available()

    inject(env, {"cbTrip": True})
    st = rolled_back(env, "R2", timeout=DETECT + 20)
    assert st["lastRollback"]["reason"] == "CircuitBreakerTripped", st["lastRollback"]
    wait_for("R2 on the Deployment", lambda: managed(env)[SYMBOLS] != "", 20)
    applied = managed(env)
    print(f"R2 after SYM4 was removed: {SYMBOLS}={applied[SYMBOLS]!r}, status {st['enforcedSymbols']}")
    assert "SYM4" not in applied[SYMBOLS].split(","), applied
    assert applied == {**full_env, SYMBOLS: "SYM1,SYM2,SYM3"}, applied
    assert st["enforcedSymbols"] == ["SYM1", "SYM2", "SYM3"], st["enforcedSymbols"]
    assert "SYM4" not in st.get("lastKnownGoodSymbols", []), st["lastKnownGoodSymbols"]
    assert "SYM4" not in json.dumps(history(st, action="RollbackR2")[-1]["evidence"].get("setEnv", {}))


# ------------------------------------------------------------- 6. Deployment deleted/replaced


def test_deployment_deleted_and_recreated_pauses_then_redoes_the_rung(grinder_env):
    """Mid-window the Deployment is deleted: Progressing=False/DeploymentMissing while absent.
    Recreated (the example, i.e. the starting env): Canary's env re-applied with a new restart,
    the new pods verified, the window started again after the recreation."""
    env = grinder_env
    start(env, spec("Canary", observation={"shadow": FAST, "canary": HOLD}))
    st = observing(env, "Canary")
    token = template_token(env)
    first_start = st["observationStartedAt"]

    env.apps.delete_namespaced_deployment(env.deployment, env.namespace)

    def gone() -> bool:
        try:
            env.apps.read_namespaced_deployment(env.deployment, env.namespace)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for("Deployment deleted", gone, 30)
    st = env.wait_status("Progressing=False reason DeploymentMissing",
                         lambda s: condition(s, "Progressing").get("status") == "False"
                         and condition(s, "Progressing").get("reason") == "DeploymentMissing", DETECT + 5)
    print(f"while missing: state {st['state']}, Progressing {condition(st, 'Progressing')}")
    assert not st.get("lastRollback"), st["lastRollback"]
    holds_for(3, lambda: condition(env.status(), "Progressing").get("reason") == "DeploymentMissing"
              and env.status().get("state") != "Passed", "DeploymentMissing while absent")

    recreated_at = utcnow().replace(microsecond=0)
    env.apply_grinder(replicas=1)  # the starting env: ENFORCE=0, no allowlist
    wait_for("Canary's env re-applied to the new Deployment",
             lambda: managed(env) == CANARY_ENV and template_token(env) not in (None, token), DETECT + 10, every=0.3)
    st = env.wait_status("Canary Observing again on the recreated Deployment's pods",
                         lambda s: s.get("state") == "Observing" and s.get("step") == "Canary"
                         and ts(s["observationStartedAt"]) >= recreated_at, 90)
    print(f"window: first started {first_start}, restarted {st['observationStartedAt']} (recreated {rfc3339(recreated_at)})")
    after = [h for h in st["history"] if ts(h["at"]) >= recreated_at]
    assert any(h["action"] == "RestartIssued" for h in after), after
    assert any(h["action"] == "ObservationStarted" for h in after), after  # the new pods verified
    assert not history(st, reason="EnvChangedOutside"), "a recreated Deployment is not an outside env change"
    assert not st.get("lastRollback") and st["state"] != "Halted", st
    assert condition(st, "Progressing").get("reason") != "DeploymentMissing", st["conditions"]
    pods = env.grinder_pods()
    assert pods and all(p.metadata.creation_timestamp >= recreated_at for p in pods)
    assert all((p.metadata.annotations or {}).get(TOKEN_ANNOTATION) == template_token(env) for p in pods), \
        [(p.metadata.name, p.metadata.annotations) for p in pods]


# ------------------------------------------------------------------ 7. missing logs, deadlines


class LogHider:
    """Makes the log of matching pods unreadable on the testbed's node: the container's log file
    (the kubelet's podLogsDir, <ns>_<pod>_<uid>/<container>/<restarts>.log) is moved aside and a
    directory put in its place, so the kubelet's containerLogs fails (the API server answers an
    error, not "container waiting"). containerd keeps writing to the moved file; `restore()`
    puts it back, with everything logged meanwhile."""

    def __init__(self, env: Env, wanted: Callable[[client.V1Pod], bool], container: str = "grinder"):
        self.env, self.wanted, self.container = env, wanted, container
        self.hidden: dict[str, Path] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LogHider":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                for pod in self.env.core.list_namespaced_pod(self.env.namespace, label_selector="app=grinder").items:
                    uid = pod.metadata.uid
                    if uid in self.hidden or not self.wanted(pod) or not self._running(pod):
                        continue
                    logs = sorted(POD_LOGS_DIR.glob(f"*_{uid}/{self.container}/*.log"))
                    path = logs[-1] if logs else None
                    if path is not None and path.is_file():
                        os.rename(path, path.with_name(path.name + ".hidden"))
                        path.mkdir()
                        self.hidden[uid] = path
            except Exception as exc:  # noqa: BLE001 - keep hiding; report at the end
                self.errors.append(repr(exc))
            time.sleep(0.05)

    def _running(self, pod: client.V1Pod) -> bool:
        # Before it runs the container's log file exists already, but the API server answers
        # "waiting to start" without asking the kubelet: hide it once there is a log to read.
        return any(s.name == self.container and s.state and s.state.running
                   for s in pod.status.container_statuses or [])

    def restore(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for path in self.hidden.values():
            try:
                path.rmdir()
                os.rename(path.with_name(path.name + ".hidden"), path)
            except OSError as exc:
                self.errors.append(f"restore {path}: {exc!r}")


def pod_env(pod: client.V1Pod) -> dict[str, str | None]:
    return {e.name: e.value for e in pod.spec.containers[0].env or []}


def test_unreadable_pod_log_is_missing_data_not_a_rollback(grinder_env):
    """The Canary pods' logs cannot be read (kubelet error): the step holds (missing data:
    MetricsAvailable=False), no rollback, no RestartTimedOut though progressDeadline (20s)
    passes; once the logs read again, Canary is verified and observed."""
    env = grinder_env
    if not POD_LOGS_DIR.is_dir():
        pytest.fail(f"{POD_LOGS_DIR} missing: this test needs the local testbed's node (its pod log files)")
    start(env, spec("Canary", observation={"shadow": "6s", "canary": HOLD}, progressDeadline="20s"))
    observing(env, "Shadow")

    with LogHider(env, lambda p: pod_env(p).get(ENFORCE) == "1") as hider:
        st = env.wait_status("Canary restarting", lambda s: s.get("step") == "Canary", 60)
        wait_for("a Canary pod's log hidden", lambda: hider.hidden, 30, every=0.1)
        pods = [p for p in env.core.list_namespaced_pod(env.namespace, label_selector="app=grinder").items
                if p.metadata.uid in hider.hidden]
        for pod in pods[:1]:  # the sabotage works: reading the log fails, it is not "no log yet"
            try:
                text = env.core.read_namespaced_pod_log(pod.metadata.name, env.namespace, container="grinder")
            except client.ApiException as exc:
                print(f"pod log read while hidden: {exc.status} {str(exc.body)[:200]}")
                assert exc.status not in (400, 404), exc
            else:  # a real kubelet answers 200 with its error as the log (the adapter knows it)
                print(f"pod log read while hidden: {text[:200]!r}")
                assert KUBELET_LOG_FILE_ERROR.match(text), f"the hidden log was still readable: {text[:300]!r}"
        st = env.wait_status("MetricsAvailable=False (an unreadable log is missing data)",
                             lambda s: condition(s, "MetricsAvailable").get("status") == "False", 40)
        print(f"logs unreadable: state {st['state']}, MetricsAvailable {condition(st, 'MetricsAvailable')}")
        # Past progressDeadline (20s from the patch reaching the Deployment): holding, no verdict.
        holds_for(25, lambda: (lambda s: s.get("step") == "Canary" and s.get("state") in ("Restarting", "Verifying")
                               and not s.get("lastRollback") and s.get("state") != "Halted")(env.status()),
                  "Canary held while its pods' logs cannot be read")
        assert managed(env) == CANARY_ENV
    assert not hider.errors, hider.errors
    st = observing(env, "Canary", timeout=60)
    assert not st.get("lastRollback"), st["lastRollback"]
    assert not history(st, reason="RestartTimedOut") and not history(st, reason="ThresholdResolutionFailed"), \
        [(h["action"], h["reason"]) for h in st["history"]]
    assert managed(env) == CANARY_ENV


def test_operator_down_past_progress_deadline_does_not_time_out_an_unissued_restart(grinder_env):
    """The operator decides Canary (status written) but its env patch cannot reach the
    Deployment (an admission policy denies template changes), then it is down for longer than
    progressDeadline. Back up, with the patch allowed again: it issues the restart now, and the
    deadline counts from then: no RestartTimedOut, no rollback, Canary observed."""
    env = grinder_env
    start(env, spec("Canary", observation={"shadow": "6s", "canary": HOLD}, progressDeadline="12s"))
    observing(env, "Shadow")
    admission = client.AdmissionregistrationV1Api(env.api)
    name = f"e2e-freeze-template-{env.namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                                                    "operations": ["UPDATE"], "resources": ["deployments"]}]},
            "validations": [{"expression": "object.spec.template == oldObject.spec.template",
                             "message": "e2e: pod template frozen (the operator's patch must not reach the Deployment)"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.namespace}}}},
    }

    def frozen() -> bool:
        probe = {"spec": {"template": {"metadata": {"annotations": {"e2e/probe": uuid.uuid4().hex}}}}}
        try:
            env.apps.patch_namespaced_deployment(env.deployment, env.namespace, probe, dry_run="All")
        except client.ApiException as exc:
            return exc.status in (403, 422) and "frozen" in str(exc.body)
        return False

    admission.create_validating_admission_policy(policy)
    try:
        admission.create_validating_admission_policy_binding(binding)
        wait_for("the admission policy in force", frozen, 30)
        st = env.wait_status("Canary decided (status written, the patch denied)",
                             lambda s: s.get("step") == "Canary" and s.get("state") == "Restarting", 60)
        assert managed(env)[ENFORCE] == "0", "the patch reached the Deployment despite the policy"
        env.operator.stop()
        down_at = time.monotonic()
        # Down well past progressDeadline (12s); the Deployment untouched all along.
        holds_for(18, lambda: managed(env)[ENFORCE] == "0", "Deployment untouched while the operator is down")
    finally:
        for delete in (admission.delete_validating_admission_policy_binding, admission.delete_validating_admission_policy):
            try:
                delete(name)
            except client.ApiException:
                pass
    wait_for("the admission policy gone", lambda: not frozen(), 30)
    env.operator.start()
    print(f"operator restarted after {time.monotonic() - down_at:.0f}s down (progressDeadline 12s)")
    wait_for("Canary's env patched by the restarted operator", lambda: managed(env) == CANARY_ENV, 30)
    st = observing(env, "Canary", timeout=60)
    assert not st.get("lastRollback"), st["lastRollback"]
    assert not history(st, reason="RestartTimedOut"), [(h["action"], h["reason"]) for h in st["history"]]
    assert managed(env) == CANARY_ENV


# -------------------------------------------------------------------------------- 8. suspend


def test_suspend_pauses_the_window_reports_no_go_and_keeps_rolled_back(grinder_env):
    env = grinder_env
    start(env, spec("Canary", observation={"shadow": FAST, "canary": "90s"}))
    st = observing(env, "Canary")
    ends_before = ts(st["observationEndsAt"])

    # (a) The window does not run while suspended.
    suspended_at = time.monotonic()
    env.patch_spec(suspend=True)
    env.wait_state("Suspended", timeout=DETECT + 5)
    holds_for(8, lambda: env.status().get("state") == "Suspended" and managed(env) == CANARY_ENV,
              "Suspended, env unchanged")
    patched = env.patch_spec(suspend=False)
    resumed_at = time.monotonic()
    suspended_for = resumed_at - suspended_at
    generation = patched["metadata"]["generation"]
    st = env.wait_status("Observing Canary again", lambda s: s.get("state") == "Observing"
                         and s.get("observedGeneration") == generation, DETECT + 5)
    st = env.wait_status("observationEndsAt moved by the suspended time",
                         lambda s: (ts(s["observationEndsAt"]) - ends_before).total_seconds() >= suspended_for - 3,
                         DETECT + 3)
    moved = (ts(st["observationEndsAt"]) - ends_before).total_seconds()
    print(f"suspended {suspended_for:.1f}s; observationEndsAt moved {moved:.0f}s")
    assert moved <= suspended_for + 2 * INTERVAL + 4, (moved, suspended_for)
    assert st["step"] == "Canary" and not st.get("lastRollback")

    # (b) A CB trip while suspended: reported at once, nothing changed, acted on at resume.
    env.patch_spec(suspend=True)
    env.wait_state("Suspended", timeout=DETECT + 5)
    generation_dep = dep_generation(env)
    inject(env, {"cbTrip": True})
    st = env.wait_status("Degraded=True while suspended",
                         lambda s: condition(s, "Degraded").get("status") == "True", DETECT + 5)
    print(f"while suspended: Degraded {condition(st, 'Degraded')}")
    assert condition(st, "Degraded").get("reason") == "CircuitBreakerTripped", st["conditions"]
    warning_event(env, "CircuitBreakerTripped", timeout=10)
    holds_for(3, lambda: (lambda s: s.get("state") == "Suspended" and not s.get("lastRollback"))(env.status())
              and managed(env) == CANARY_ENV and dep_generation(env) == generation_dep,
              "nothing changed while suspended")
    env.patch_spec(suspend=False)
    st = rolled_back(env, "R1", timeout=DETECT + 10, reason="CircuitBreakerTripped")
    wait_for("R1 on the Deployment", lambda: managed(env) == {**CANARY_ENV, ENFORCE: "0"}, 20)
    last = st["lastRollback"]

    # (c) Toggling suspend is not a spec change for re-arming: still RolledBack by the same R1.
    patched = env.patch_spec(suspend=True)
    env.wait_state("Suspended", timeout=DETECT + 5)
    patched = env.patch_spec(suspend=False)
    generation = patched["metadata"]["generation"]
    st = env.wait_status("resumed", lambda s: s.get("observedGeneration") == generation
                         and s.get("state") != "Suspended", DETECT + 5)
    assert st["state"] == "RolledBack", st["state"]
    holds_for(6, lambda: (lambda s: s.get("state") == "RolledBack" and s.get("lastRollback") == last)(env.status())
              and managed(env)[ENFORCE] == "0", "RolledBack kept after resume")
    st = env.status()
    after = [h for h in st["history"] if h["at"] >= last["at"]]
    assert not [h for h in after if h["reason"] == "Rearmed"], after


# ------------------------------------------------------------------- 9. alert rollbacks narrow


def post_alerts(url: str, token: str, alerts: list[dict]) -> tuple[int, Any]:
    payload = {"version": "4", "status": "firing", "receiver": "fillprob-operator", "groupKey": "{}:{}",
               "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "", "alerts": alerts}
    return http("POST", url, json.dumps(payload).encode(),
                {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def alert(env: Env, playbook: str, starts_at: datetime) -> dict:
    return {"status": "firing",
            "labels": {"alertname": "E2EManualRollback", "fillprob_rollout": env.rollout,
                       "namespace": env.namespace, "rollback": playbook},
            "annotations": {"summary": f"e2e asks for {playbook}"},
            "startsAt": rfc3339(starts_at), "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": uuid.uuid4().hex[:16], "generatorURL": ""}


def test_alert_rollback_narrows_whatever_its_starts_at_or_is_skipped(grinder_env):
    env = grinder_env
    port, token = free_port(), f"e2e-{uuid.uuid4().hex}"
    restart_operator(env, {"FILLPROB_WEBHOOK_ADDR": f"127.0.0.1:{port}", "FILLPROB_WEBHOOK_TOKEN": token})
    url = f"http://127.0.0.1:{port}/alertmanager"
    wait_for("webhook /healthz", lambda: urllib.request.urlopen(url.replace("/alertmanager", "/healthz"), timeout=2)
             .status == 200, 30)
    start(env, spec("AutoThreshold", expandBatches=[],
                    observation={"shadow": FAST, "canary": FAST, "full": FAST, "autoThreshold": HOLD},
                    gates={"thresholdRange": {"minBps": 1000, "maxBps": 3000}}))
    observing(env, "AutoThreshold", timeout=WALK + 40)

    # The alert fires now; the gates answer the threshold jump first, with an automatic R3.
    fired = utcnow() - timedelta(seconds=2)
    inject(env, {"thresholdJumpBps": 2000})
    st = rolled_back(env, "R3", timeout=DETECT + 20)
    r3 = st["lastRollback"]
    assert ts(r3["at"]) > fired
    r3_env = {ENFORCE: "1", SYMBOLS: "", AUTO: "0", MIN_BPS: "2500"}
    wait_for("R3 on the Deployment", lambda: managed(env) == r3_env, 20)

    # An explicit rollback="R1" alert that started before R3: R1 narrows after R3, so applied.
    r1_alert = alert(env, "R1", fired)
    status, body = post_alerts(url, token, [r1_alert])
    print(f"R1 alert (startsAt {r1_alert['startsAt']}, before R3 at {r3['at']}): {status} {body}")
    assert status == 200, (status, body)
    st = rolled_back(env, "R1", timeout=DETECT + 10, reason="AlertFired")
    wait_for("R1 on the Deployment", lambda: managed(env) == {**r3_env, ENFORCE: "0"}, 20)
    entry = history(st, action="RollbackR1")[-1]
    assert entry["reason"] == "AlertFired" and entry["evidence"]["fingerprint"] == r1_alert["fingerprint"], entry
    last = st["lastRollback"]

    # The same alert again: nothing changes.
    generation = dep_generation(env)
    status, body = post_alerts(url, token, [r1_alert])
    print(f"duplicate: {status} {body}")
    assert status == 200, (status, body)
    holds_for(5, lambda: (lambda s: s.get("lastRollback") == last and len(history(s, action="RollbackR1")) == 1
                          and s.get("state") == "RolledBack")(env.status())
              and dep_generation(env) == generation, "a duplicate alert changes nothing")

    # An alert asking for a playbook that would not narrow (R2 would turn enforcement back on):
    # recorded as RollbackSkipped, env unchanged.
    r2_alert = alert(env, "R2", utcnow())
    status, body = post_alerts(url, token, [r2_alert])
    print(f"R2 alert after R1: {status} {body}")
    assert status == 200, (status, body)
    st = env.wait_status("RollbackSkipped for the R2 alert",
                         lambda s: any(h["action"] == "RollbackSkipped" and h["reason"] == "RollbackSkipped"
                                       and h["evidence"].get("fingerprint") == r2_alert["fingerprint"]
                                       for h in s.get("history", [])), DETECT + 10)
    skipped = [h for h in history(st, action="RollbackSkipped") if h["evidence"].get("fingerprint") == r2_alert["fingerprint"]]
    assert len(skipped) == 1, skipped
    holds_for(4, lambda: (lambda s: s.get("lastRollback") == last and s.get("state") == "RolledBack"
                          and not history(s, action="RollbackR2"))(env.status())
              and managed(env) == {**r3_env, ENFORCE: "0"} and dep_generation(env) == generation,
              "the skipped R2 changed nothing")


# --------------------------------------------------------------- 10. preflight reruns always


def test_model_dir_change_while_rolled_back_reruns_preflight_and_stays_rolled_back(grinder_env, testbed):
    env = grinder_env
    start(env, spec("Canary", observation={"shadow": FAST, "canary": HOLD}))
    observing(env, "Canary")
    inject(env, {"cbTrip": True})
    st = rolled_back(env, "R1", timeout=DETECT + 20)
    last = st["lastRollback"]
    preflight_before = st.get("preflight") or {}
    run_before, jobs_before = preflight_before.get("run", 0), jobs(env)
    assert run_before >= 1 and len(jobs_before) == 1, (preflight_before, jobs_before)

    kubectl(testbed, "set", "env", f"deployment/{env.deployment}", "-n", env.namespace,
            f"{MODEL_DIR}={EXAMPLE_MODEL_DIR}/")
    states: set[str] = set()

    def rerun_done() -> dict | None:
        s = env.status()
        states.add(s.get("state"))
        pf = s.get("preflight") or {}
        return s if pf.get("run", 0) > run_before and pf.get("state") in ("Succeeded", "Failed") else None

    st = wait_for("a new preflight run finished", rerun_done, 90, every=0.3)
    print(f"preflight rerun: {st['preflight']}; states seen {states}; jobs {jobs(env)}")
    assert st["preflight"]["run"] == run_before + 1, st["preflight"]
    assert st["preflight"]["state"] == "Succeeded", st["preflight"]
    assert st["preflight"].get("modelDir") == f"{EXAMPLE_MODEL_DIR}/", st["preflight"]
    assert len(jobs(env)) == len(jobs_before) + 1, jobs(env)
    assert states == {"RolledBack"}, states
    holds_for(4, lambda: (lambda s: s.get("state") == "RolledBack" and s.get("lastRollback") == last)(env.status())
              and managed(env)[ENFORCE] == "0", "still RolledBack by the same R1")
