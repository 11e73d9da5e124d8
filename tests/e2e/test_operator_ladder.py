"""The ladder on the testbed (issue 3): every rung of runbook 32 walked with windows of seconds.

One FillProbRollout walks Preflight -> Shadow -> Canary -> Expand 1/2 -> Expand 2/2 -> Full ->
AutoThreshold; after each step the Deployment's managed env must equal API.md's env table
exactly, unrelated env untouched. Further tests: a lower targetPhase applies at once, the
threshold-jump row in Canary halts (and Halted changes nothing until a spec change), suspend.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from datetime import datetime

import pytest
from support import MANAGED_KEYS, wait_for

pytestmark = pytest.mark.e2e

ENFORCE = "GRINDER_FILL_MODEL_ENFORCE"
SYMBOLS = "GRINDER_FILL_PROB_ENFORCE_SYMBOLS"
AUTO = "GRINDER_FILL_PROB_AUTO_THRESHOLD"
MIN_BPS = "GRINDER_FILL_PROB_MIN_BPS"
TOKEN_ANNOTATION = "grinder.io/restart-token"
CANARY = ["SYM1", "SYM2"]
BATCHES = [["SYM3", "SYM4"], ["SYM5", "SYM6"]]
INTERVAL = "1s"
# Configured (3000) differs from the eval report's recommendation (2500), so recommend_only
# (effective = configured) and auto_apply (effective = recommended) are told apart.
CONFIGURED_BPS = "3000"
RECOMMENDED_BPS = 2500

# API.md "Walking the ladder": the env table, per step label. MIN_BPS is never touched here
# (spec.minBps equals the container's value).
EXPECTED_ENV = {
    "Shadow": {ENFORCE: "0", AUTO: "0"},
    "Canary": {ENFORCE: "1", SYMBOLS: "SYM1,SYM2", AUTO: "0"},
    "Expand 1/2": {ENFORCE: "1", SYMBOLS: "SYM1,SYM2,SYM3,SYM4", AUTO: "0"},
    "Expand 2/2": {ENFORCE: "1", SYMBOLS: "SYM1,SYM2,SYM3,SYM4,SYM5,SYM6", AUTO: "0"},
    "Full": {ENFORCE: "1", SYMBOLS: "", AUTO: "0"},
    "AutoThreshold": {ENFORCE: "1", SYMBOLS: "", AUTO: "1"},
}
PHASE_OF = {"Shadow": "Shadow", "Canary": "Canary", "Expand 1/2": "Expand", "Expand 2/2": "Expand",
            "Full": "Full", "AutoThreshold": "AutoThreshold"}
ENFORCED_OF = {
    "Shadow": [],
    "Canary": CANARY,
    "Expand 1/2": CANARY + BATCHES[0],
    "Expand 2/2": CANARY + BATCHES[0] + BATCHES[1],
}
LADDER = list(EXPECTED_ENV)
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


# ----------------------------------------------------------------------------- helpers


def expected(label: str) -> dict[str, str]:
    return {**EXPECTED_ENV[label], MIN_BPS: CONFIGURED_BPS}


def spec(target: str, windows: dict[str, str], **extra) -> dict:
    return {
        "targetPhase": target,
        "canarySymbols": CANARY,
        "expandBatches": BATCHES,
        "safeSymbols": ["SYM1"],
        "minBps": int(CONFIGURED_BPS),
        "observation": windows,
        "prometheus": {"interval": INTERVAL},
        "progressDeadline": "2m",
        **extra,
    }


def unrelated_env(env_obj) -> list:
    """The container's env entries the operator must never touch, in order, as dicts."""
    dep = env_obj.apps.read_namespaced_deployment(env_obj.deployment, env_obj.namespace)
    container = dep.spec.template.spec.containers[0]
    return [env_obj.api.sanitize_for_serialization(e) for e in container.env or [] if e.name not in MANAGED_KEYS]


def managed(env_obj) -> dict[str, str]:
    """The managed keys present on the container. An env entry with an empty value comes back
    without `value` (the API server omits empty strings), so present-but-empty reads as ""."""
    dep = env_obj.apps.read_namespaced_deployment(env_obj.deployment, env_obj.namespace)
    out = {}
    for e in dep.spec.template.spec.containers[0].env or []:
        if e.name in MANAGED_KEYS:
            assert e.value_from is None, e
            out[e.name] = e.value or ""
    return out


def template_token(env_obj) -> str | None:
    dep = env_obj.apps.read_namespaced_deployment(env_obj.deployment, env_obj.namespace)
    return (dep.spec.template.metadata.annotations or {}).get(TOKEN_ANNOTATION)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def prom_query(testbed, query: str) -> list[dict]:
    url = f"{testbed.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback)
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def assert_conditions(env_obj, status: dict) -> None:
    """Standard condition shape (metav1.Condition) for the four types, on this generation."""
    generation = env_obj.get_rollout()["metadata"]["generation"]
    by_type = {c["type"]: c for c in status.get("conditions", [])}
    assert set(by_type) >= {"Ready", "Progressing", "Degraded", "MetricsAvailable"}, by_type
    for c in by_type.values():
        assert c["status"] in ("True", "False", "Unknown"), c
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", c["reason"]), c
        assert isinstance(c.get("message", ""), str), c
        assert RFC3339.match(c["lastTransitionTime"]), c
        assert c["observedGeneration"] == generation, c


class StepRecorder:
    """Poll status fast; keep the sequence of distinct (step, state) seen and the managed env
    seen while each step was Observing/Passed."""

    def __init__(self, env_obj):
        self.env = env_obj
        self.seen: list[tuple[str, str]] = []
        self.envs: dict[str, list[dict]] = {}  # step -> distinct managed envs seen while Observing/Passed

    def poll(self) -> dict:
        st = self.env.status()
        key = (st.get("step"), st.get("state"))
        if key[1] in ("Observing", "Passed"):
            current = managed(self.env)
            # Re-read: count the env only if the status did not move on meanwhile.
            again = self.env.status()
            if (again.get("step"), again.get("state")) == key:
                seen = self.envs.setdefault(key[0], [])
                if current not in seen:
                    seen.append(current)
        if key[1] is not None and (not self.seen or self.seen[-1] != key):
            self.seen.append(key)
        return st

    def until(self, what: str, predicate, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.poll()
            if predicate(st):
                return st
            if st.get("state") in ("Halted", "RolledBack"):
                raise AssertionError(f"{what}: rollout stopped: {json.dumps(st, indent=1)[:3000]}\n"
                                     f"{self.env.operator.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; seen {self.seen}\n"
                                     f"{json.dumps(st, indent=1)[:3000]}\n{self.env.operator.tail()}")
            time.sleep(0.2)


def history_actions(status: dict) -> list[tuple[str, str, str]]:
    return [(h["step"], h["action"], h["reason"]) for h in status.get("history", [])]


def hold(what: str, probe, seconds: float, every: float = 0.5):
    """Assert `probe()` keeps returning the same value for `seconds` (nothing changes)."""
    first = probe()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(every)
        now = probe()
        assert now == first, f"{what} changed while it must not:\nbefore: {first}\nafter:  {now}"
    return first


# ----------------------------------------------------------------------------- the walk


def test_walks_every_rung_to_auto_threshold(grinder_env, testbed):
    env = grinder_env
    env.apply_grinder({MIN_BPS: CONFIGURED_BPS})
    env.wait_grinder_available()
    unrelated_before = unrelated_env(env)
    assert any(e["name"] == "GRINDER_LOG_LEVEL" for e in unrelated_before)
    first_rs = {p.metadata.labels.get("pod-template-hash") for p in env.grinder_pods()}
    generation_before = env.apps.read_namespaced_deployment(env.deployment, env.namespace).metadata.generation
    assert template_token(env) is None

    windows = {"shadow": "5s", "canary": "5s", "expandBatch": "5s", "full": "5s", "autoThreshold": "6s"}
    env.apply_rollout(**spec("AutoThreshold", windows))
    rec = StepRecorder(env)

    for label in LADDER:
        # The step's env is applied from Restarting on; it must be exactly the table's while the
        # step is observed and when it has passed.
        st = rec.until(f"{label} Observing", lambda s, lb=label: s.get("step") == lb
                       and s.get("state") in ("Observing", "Passed"), 150)
        assert managed(env) == expected(label), (label, managed(env))
        assert unrelated_env(env) == unrelated_before, label
        assert st["phase"] == PHASE_OF[label]
        if label in ENFORCED_OF:
            assert st.get("enforcedSymbols", []) == ENFORCED_OF[label], st
        else:  # Full/AutoThreshold: every symbol (spec + traded) is enforced
            assert set(st["enforcedSymbols"]) >= set(CANARY + BATCHES[0] + BATCHES[1]), st
        assert st.get("enforcedSymbolCount") == len(st.get("enforcedSymbols", [])), st
        started, ends = parse_time(st["observationStartedAt"]), parse_time(st["observationEndsAt"])
        window = 6 if label == "AutoThreshold" else 5
        assert (ends - started).total_seconds() >= window, st
        assert_conditions(env, st)

        if label == "Shadow":
            check_shadow(env, testbed, st, first_rs, generation_before)
        if label == "Canary":
            assert st.get("lastKnownGoodSymbols", []) == [], st  # nothing with an allowlist passed yet
        if label == "Expand 1/2":
            assert st["lastKnownGoodSymbols"] == CANARY, st
        if label == "Expand 2/2":
            assert st["lastKnownGoodSymbols"] == CANARY + BATCHES[0], st
        if label in ("Full", "AutoThreshold"):
            assert st["lastKnownGoodSymbols"] == CANARY + BATCHES[0] + BATCHES[1], st

    final = rec.until("AutoThreshold Passed", lambda s: s.get("step") == "AutoThreshold"
                      and s.get("state") == "Passed", 60)
    assert managed(env) == expected("AutoThreshold")
    assert unrelated_env(env) == unrelated_before

    # Never skipped: the order of steps seen is the ladder, and in history each step's
    # RestartIssued comes only after the previous step's StepPassed (ObservationPassed).
    print("seen (step, state):", rec.seen)
    for label in LADDER:  # every poll while the step was observed or passed saw exactly its env
        assert rec.envs.get(label) == [expected(label)], (label, rec.envs.get(label))
    steps_seen = [s for s, _ in rec.seen if s in EXPECTED_ENV]
    assert list(dict.fromkeys(steps_seen)) == LADDER, rec.seen
    hist = history_actions(final)
    for previous, label in zip(LADDER, LADDER[1:]):
        passed_at = hist.index((previous, "StepPassed", "ObservationPassed"))
        restart_at = next(i for i, h in enumerate(hist) if h[0] == label and h[1] == "RestartIssued")
        assert passed_at < restart_at, (previous, label, hist)
    assert ("AutoThreshold", "StepPassed", "ObservationPassed") in hist
    assert not any(h[1] in ("Halted",) or h[1].startswith("Rollback") for h in hist), hist
    for h in final["history"]:
        assert RFC3339.match(h["at"]) and h["phase"] and h["reason"], h
        if h["action"] == "StepPassed":
            assert h["evidence"].get("cbTrips"), h  # the metric values that decided
            assert all(v == 0 for v in h["evidence"]["cbTrips"].values()), h
        if h["action"] == "ObservationStarted":
            assert any("FILL_PROB_THRESHOLD_RESOLUTION_OK" in line for line in h["evidence"]["logLines"]), h

    # AutoThreshold: status threshold from the new pods' log, the gauge equals effective_bps.
    assert final["phase"] == "AutoThreshold" and final["step"] == "AutoThreshold"
    t = final["threshold"]
    assert t["mode"] == "auto_apply", t
    assert t["effectiveBps"] == RECOMMENDED_BPS and t["recommendedBps"] == RECOMMENDED_BPS, t
    assert t["configuredBps"] == int(CONFIGURED_BPS), t
    pods = {p.metadata.name for p in env.grinder_pods()}
    samples = wait_for("auto_threshold gauge of the new pods", lambda: [
        r for r in prom_query(testbed, f'grinder_router_fill_prob_auto_threshold_bps{{namespace="{env.namespace}"}}')
        if r["metric"].get("pod") in pods], 30)
    assert {float(r["value"][1]) for r in samples} == {float(t["effectiveBps"])}, samples
    for pod in env.grinder_pods():
        log = env.core.read_namespaced_pod_log(pod.metadata.name, env.namespace)
        assert f"FILL_PROB_THRESHOLD_RESOLUTION_OK mode=auto_apply recommended_bps={RECOMMENDED_BPS} " \
               f"configured_bps={CONFIGURED_BPS} effective_bps={RECOMMENDED_BPS}" in log, log[:2000]

    # Conditions at the target: Ready, not Progressing, not Degraded, metrics in.
    assert_conditions(env, final)
    cond = {c["type"]: c for c in final["conditions"]}
    assert cond["Ready"]["status"] == "True", cond
    assert cond["Progressing"]["status"] == "False", cond
    assert cond["Degraded"]["status"] == "False", cond
    assert cond["MetricsAvailable"]["status"] == "True", cond
    assert final["observedGeneration"] == env.get_rollout()["metadata"]["generation"]

    # Every transition is an Event on the FillProbRollout.
    reasons = {e.reason for e in env.events()}
    assert {"PreflightStarted", "PreflightPassed", "StepStarted", "RolloutComplete",
            "PostRestartChecksPassed", "ObservationPassed"} <= reasons, reasons
    history_reasons = {h["reason"] for h in final["history"]}
    assert history_reasons <= reasons, history_reasons - reasons
    warnings = {e.reason for e in env.events() if e.type == "Warning"}
    assert warnings <= {"MetricsUnavailable"}, warnings  # missing data while pods start, nothing else

    # `kubectl get fpr` columns.
    out = subprocess.run([testbed.kubectl, "get", "fpr", "-n", env.namespace], capture_output=True,
                         text=True, timeout=30, check=True).stdout.splitlines()
    assert out[0].split() == ["NAME", "TARGET", "PHASE", "STEP", "STATE", "SYMBOLS", "AGE"], out
    row = out[1].split()
    assert row[:6] == ["grinder", "AutoThreshold", "AutoThreshold", "AutoThreshold", "Passed",
                       str(final["enforcedSymbolCount"])], out


def check_shadow(env, testbed, st: dict, first_rs: set, generation_before: int) -> None:
    """Shadow: restarted although its env equals the starting state; recommend_only; no blocks."""
    dep = env.apps.read_namespaced_deployment(env.deployment, env.namespace)
    assert dep.metadata.generation > generation_before
    token = (dep.spec.template.metadata.annotations or {}).get(TOKEN_ANNOTATION)
    assert token, dep.spec.template.metadata.annotations
    pods = env.grinder_pods()
    new_rs = {p.metadata.labels.get("pod-template-hash") for p in pods}
    assert new_rs and not (new_rs & first_rs), (first_rs, new_rs)  # a new ReplicaSet
    for pod in pods:
        log = env.core.read_namespaced_pod_log(pod.metadata.name, env.namespace)
        assert "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only" in log, log[:2000]
        assert "FILL_PROB_THRESHOLD_RESOLUTION_FAILED" not in log and "THRESHOLD_RESOLVE_SKIPPED" not in log
    assert st["threshold"]["mode"] == "recommend_only", st
    assert st["threshold"]["effectiveBps"] == int(CONFIGURED_BPS), st
    # Zero blocks on the new pods (Prometheus), and the window passes with them.
    names = {p.metadata.name for p in pods}
    blocks = wait_for("blocks series of the new pods", lambda: [
        r for r in prom_query(testbed, f'grinder_router_fill_prob_blocks_total{{namespace="{env.namespace}"}}')
        if r["metric"].get("pod") in names], 30)
    assert all(float(r["value"][1]) == 0 for r in blocks), blocks


# ----------------------------------------------------------------------------- going down


def test_lower_target_applies_at_once(grinder_env):
    env = grinder_env
    env.apply_grinder({MIN_BPS: CONFIGURED_BPS})
    env.wait_grinder_available()
    windows = {"shadow": "3s", "canary": "3s", "expandBatch": "3s", "full": "1h", "autoThreshold": "1h"}
    env.apply_rollout(**spec("Expand", windows))
    st = env.wait_state("Passed", "Expand 2/2", timeout=150)
    assert managed(env) == expected("Expand 2/2")
    history_len = len(st["history"])

    env.patch_spec(targetPhase="Canary")
    # At once: the env is Canary's within a couple of intervals, without any window elapsing.
    t0 = time.monotonic()
    wait_for("Canary env applied", lambda: managed(env) == expected("Canary"), 15, every=0.2)
    assert time.monotonic() - t0 < 15
    st = env.status()
    assert st["step"] == "Canary" and st["phase"] == "Canary", st
    new = st["history"][history_len:]
    lowered = [h for h in new if h["action"] == "RestartIssued"]
    assert lowered and lowered[0]["reason"] == "TargetLowered" and lowered[0]["step"] == "Canary", new
    assert not any(h["action"] in ("StepPassed", "ObservationStarted") and h["step"] != "Canary" for h in new), new
    assert st["enforcedSymbols"] == CANARY
    # The lowered step is verified and guarded like any other, and stays there.
    st = env.wait_state("Passed", "Canary", timeout=90)
    assert managed(env) == expected("Canary")
    assert st["threshold"]["mode"] == "recommend_only"


# ----------------------------------------------------------------------------- halt rows


def test_threshold_jump_in_canary_halts_and_changes_nothing(grinder_env):
    env = grinder_env
    env.apply_grinder({MIN_BPS: CONFIGURED_BPS})
    env.wait_grinder_available()
    windows = {"shadow": "3s", "canary": "10m", "expandBatch": "3s", "full": "3s", "autoThreshold": "3s"}
    env.apply_rollout(**spec("Canary", windows))
    env.wait_state("Observing", "Canary", timeout=120)
    # The guard has seen the new pods' recommended threshold (the baseline) before the jump.
    env.wait_status("metrics in", lambda s: any(c["type"] == "MetricsAvailable" and c["status"] == "True"
                                                for c in s.get("conditions", [])), 60)
    env.sim_fault({"thresholdJumpBps": 1500})
    st = env.wait_state("Halted", "Canary", timeout=60)
    assert st["reason"] == "RecommendedThresholdJumped", st
    last = st["history"][-1]
    assert last["action"] == "Halted" and last["reason"] == "RecommendedThresholdJumped", last
    assert last["evidence"], last
    assert managed(env) == expected("Canary")  # Halt: nothing changed, no rollback
    assert {"type": "Degraded", "status": "True"}.items() <= env.condition("Degraded").items()
    env.wait_event("RecommendedThresholdJumped", "Warning")

    # Halted changes nothing further: a few intervals later, same Deployment, same history.
    def snapshot():
        dep = env.apps.read_namespaced_deployment(env.deployment, env.namespace)
        s = env.status()
        return (dep.metadata.generation, managed(env), template_token(env), s["state"], len(s["history"]))

    hold("Deployment and history while Halted", snapshot, 5)

    # A spec change re-arms: Canary is redone (restart, checks, window) on fresh pods.
    env.patch_spec(observation={**windows, "canary": "4s"})
    st = env.wait_status("re-armed", lambda s: s.get("state") in ("Restarting", "Verifying", "Observing", "Passed")
                         and s.get("step") == "Canary", 30)
    env.wait_state("Passed", "Canary", timeout=120)
    st = env.status()
    actions = [(h["action"], h["reason"]) for h in st["history"]]
    assert ("RestartIssued", "Rearmed") in actions, actions
    assert managed(env) == expected("Canary")


# ----------------------------------------------------------------------------- suspend


def test_suspend_changes_nothing_then_continues(grinder_env):
    env = grinder_env
    env.apply_grinder({MIN_BPS: CONFIGURED_BPS})
    env.wait_grinder_available()
    windows = {"shadow": "6s", "canary": "3s", "expandBatch": "3s", "full": "3s", "autoThreshold": "3s"}
    env.apply_rollout(**spec("Canary", windows))
    env.wait_state("Observing", "Shadow", timeout=120)
    env.patch_spec(suspend=True)
    st = env.wait_state("Suspended", timeout=30)
    assert st["step"] == "Shadow"
    env.wait_event("Suspended")

    def snapshot():
        dep = env.apps.read_namespaced_deployment(env.deployment, env.namespace)
        s = env.status()
        return (dep.metadata.generation, managed(env), template_token(env), s["state"], s["step"])

    # Well past the Shadow window: no promotion, no env change, still Suspended.
    before = hold("Deployment while Suspended", snapshot, 9)
    assert before[1] == expected("Shadow")

    env.patch_spec(suspend=False)
    st = env.wait_state("Passed", "Canary", timeout=120)
    assert managed(env) == expected("Canary")
    actions = [(h["step"], h["action"]) for h in st["history"]]
    assert actions.index(("Shadow", "Resumed")) < actions.index(("Shadow", "StepPassed")), actions
