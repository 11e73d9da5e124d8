"""The Argo CD health check (gitops/argocd/health.lua) run in Lua 5.1 (lupa), every library open.

Argo CD itself runs it in gopher-lua with only base, table and package: that is tested by
gitops/argocd/luatest (go test, run from tests/unit/test_argocd_gopher_lua.py).

Also: argocd-cm-patch.yaml is in sync with the .lua, and ignore-differences.yaml's jq paths
drop exactly the operator-owned fields.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lupa import lua51  # lupa==2.8, a pinned test dependency

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "gitops" / "argocd"
HEALTH_LUA = ARGOCD / "health.lua"
ARGO_HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

_spec = importlib.util.spec_from_file_location("argocd_render", ARGOCD / "render.py")
assert _spec is not None and _spec.loader is not None
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)


def health(obj: dict) -> dict:
    """Run health.lua with `obj` bound like Argo CD does (JSON-decoded: numbers are floats)."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    decoded = json.loads(json.dumps(obj), parse_int=float)
    runtime.globals().obj = runtime.table_from(decoded, recursive=True)
    result = runtime.execute(HEALTH_LUA.read_text(encoding="utf-8"))
    out = dict(result.items())
    assert set(out) == {"status", "message"}, out
    assert out["status"] in ARGO_HEALTH_STATUSES
    assert isinstance(out["message"], str) and out["message"]
    return out


def cond(ctype: str, status: str, reason: str = "", message: str = "") -> dict:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 3,
    }


def rollout(
    *,
    target: str = "Full",
    phase: str | None = "Canary",
    step: str | None = "Canary",
    state: str | None = "Observing",
    generation: int = 3,
    observed: int | None = 3,
    conditions: list[dict] | None = None,
    suspend: bool | None = None,
    status_extra: dict | None = None,
    spec_extra: dict | None = None,
) -> dict:
    spec = {"deploymentName": "grinder", "targetPhase": target, "canarySymbols": ["SYM1"]}
    if suspend is not None:
        spec["suspend"] = suspend
    spec.update(spec_extra or {})
    status: dict = {}
    for key, value in (("phase", phase), ("step", step), ("state", state), ("observedGeneration", observed)):
        if value is not None:
            status[key] = value
    if conditions is not None:
        status["conditions"] = conditions
    status.update(status_extra or {})
    return {
        "apiVersion": "grinder.io/v1alpha1",
        "kind": "FillProbRollout",
        "metadata": {"name": "grinder", "namespace": "trading", "generation": generation},
        "spec": spec,
        "status": status,
    }


READY = cond("Ready", "True", "ObservationPassed", "Full held 24h")


# --- missing status, generation lag -------------------------------------------------------


def test_missing_status_is_progressing() -> None:
    obj = rollout()
    del obj["status"]
    assert health(obj) == {"status": "Progressing", "message": "Waiting for the operator to report status"}


def test_empty_status_is_progressing() -> None:
    obj = rollout()
    obj["status"] = {}
    assert health(obj)["status"] == "Progressing"


def test_missing_spec_and_metadata_do_not_crash() -> None:
    assert health({"status": {"state": "Observing"}})["status"] == "Progressing"


@pytest.mark.parametrize("observed", [2, None])
def test_generation_lag_is_progressing_even_when_passed(observed: int | None) -> None:
    obj = rollout(target="Canary", state="Passed", observed=observed, conditions=[READY])
    got = health(obj)
    assert got["status"] == "Progressing"
    assert "observe generation 3" in got["message"]
    assert "Passed at Canary" in got["message"]


def test_generation_lag_wins_over_rolled_back() -> None:
    # A new spec re-arms a RolledBack rollout: until the operator sees it, it is in flight.
    got = health(rollout(state="RolledBack", observed=2))
    assert got["status"] == "Progressing"


# --- every state ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["Pending", "Preflight", "Restarting", "Verifying", "Observing"])
def test_in_flight_states_are_progressing(state: str) -> None:
    got = health(rollout(state=state, conditions=[cond("Ready", "False")]))
    assert got["status"] == "Progressing"
    assert got["message"].startswith(f"{state} at Canary")
    assert "target Full" in got["message"]


def test_progressing_condition_message_is_shown() -> None:
    obj = rollout(state="Observing", conditions=[cond("Progressing", "True", "Observing", "window ends 12:00Z")])
    assert "window ends 12:00Z" in health(obj)["message"]


def test_passed_below_target_is_progressing() -> None:
    got = health(rollout(target="Full", phase="Canary", step="Canary", state="Passed", conditions=[READY]))
    assert got["status"] == "Progressing"
    assert "walking up to Full" in got["message"]


def test_passed_above_target_is_progressing_down() -> None:
    got = health(rollout(target="Shadow", phase="Canary", step="Canary", state="Passed", conditions=[READY]))
    assert got["status"] == "Progressing"
    assert "moving down to Shadow" in got["message"]


@pytest.mark.parametrize(
    "target,phase,step",
    [
        ("Shadow", "Shadow", "Shadow"),
        ("Canary", "Canary", "Canary"),
        ("Expand", "Expand", "Expand 3/3"),
        ("Full", "Full", "Full"),
        ("AutoThreshold", "AutoThreshold", "AutoThreshold"),
    ],
)
def test_passed_at_target_and_ready_is_healthy(target: str, phase: str, step: str) -> None:
    got = health(rollout(target=target, phase=phase, step=step, state="Passed", conditions=[READY]))
    assert got["status"] == "Healthy"
    assert got["message"].startswith(f"Passed at {step}, the target")
    assert "ObservationPassed" in got["message"]


def test_expand_below_last_batch_is_progressing() -> None:
    got = health(rollout(target="Expand", phase="Expand", step="Expand 2/3", state="Passed", conditions=[READY]))
    assert got["status"] == "Progressing"
    assert "walking up to Expand" in got["message"]


@pytest.mark.parametrize("conditions", [None, [cond("Ready", "False", "Observing")], [cond("Ready", "Unknown")]])
def test_passed_at_target_without_ready_true_is_progressing(conditions: list[dict] | None) -> None:
    got = health(rollout(target="Canary", state="Passed", conditions=conditions))
    assert got["status"] == "Progressing"
    assert "waiting for Ready=True" in got["message"]


def test_halted_is_degraded_with_reason() -> None:
    degraded = cond("Degraded", "True", "StartingStateInvalid", "GRINDER_FILL_MODEL_ENFORCE=1 before takeover")
    got = health(rollout(phase="Preflight", step="Preflight", state="Halted", conditions=[degraded]))
    assert got == {
        "status": "Degraded",
        "message": "Halted at Preflight (StartingStateInvalid: GRINDER_FILL_MODEL_ENFORCE=1 before takeover)",
    }


def test_rolled_back_without_condition_uses_last_rollback() -> None:
    obj = rollout(
        phase="Canary",
        step="Canary",
        state="RolledBack",
        status_extra={"lastRollback": {"playbook": "R2", "reason": "CircuitBreakerTripped", "at": "2026-01-01T00:00:00Z"}},
    )
    assert health(obj) == {"status": "Degraded", "message": "RolledBack at Canary (R2 CircuitBreakerTripped)"}


def test_halted_without_condition_uses_history() -> None:
    obj = rollout(state="Halted", status_extra={"history": [{"reason": "ObservationPassed"}, {"reason": "RecommendedThresholdJumped"}]})
    got = health(obj)
    assert got["status"] == "Degraded"
    assert "RecommendedThresholdJumped" in got["message"]


def test_halted_with_nothing_else_is_still_degraded() -> None:
    assert health(rollout(state="Halted")) == {"status": "Degraded", "message": "Halted at Canary"}


def test_degraded_condition_degrades_any_state() -> None:
    got = health(rollout(state="Observing", conditions=[READY, cond("Degraded", "True", "AllOrdersBlocked", "SYM1 ratio 1.0")]))
    assert got["status"] == "Degraded"
    assert "AllOrdersBlocked: SYM1 ratio 1.0" in got["message"]


def test_degraded_false_does_not_degrade() -> None:
    got = health(rollout(target="Canary", state="Passed", conditions=[READY, cond("Degraded", "False")]))
    assert got["status"] == "Healthy"


def test_suspended_state_is_suspended() -> None:
    got = health(rollout(state="Suspended", suspend=True))
    assert got["status"] == "Suspended"
    assert got["message"].startswith("Suspended at Canary")


def test_spec_suspend_is_suspended_before_the_operator_reports_it() -> None:
    assert health(rollout(state="Observing", suspend=True))["status"] == "Suspended"


def test_suspend_false_is_not_suspended() -> None:
    assert health(rollout(state="Observing", suspend=False))["status"] == "Progressing"


def test_degraded_wins_over_suspend() -> None:
    got = health(rollout(state="RolledBack", suspend=True, conditions=[cond("Degraded", "True", "CircuitBreakerTripped")]))
    assert got["status"] == "Degraded"
    assert got["message"].endswith("; suspended")


# --- missing data ----------------------------------------------------------------------------


def test_metrics_unavailable_is_progressing_with_message() -> None:
    metrics = cond("MetricsAvailable", "False", "MetricsUnavailable", "grinder_router_orders_total absent")
    got = health(rollout(state="Observing", conditions=[metrics]))
    assert got["status"] == "Progressing"
    assert "MetricsAvailable=False" in got["message"]
    assert "grinder_router_orders_total absent" in got["message"]


def test_metrics_unavailable_at_target_is_not_healthy() -> None:
    # The guard is blind: a Passed step is not being watched while data is missing.
    metrics = cond("MetricsAvailable", "False", "MetricsUnavailable", "Prometheus unreachable")
    got = health(rollout(target="Canary", state="Passed", conditions=[READY, metrics]))
    assert got["status"] == "Progressing"
    assert "observation on hold" in got["message"]


def test_metrics_unavailable_never_hides_degraded() -> None:
    metrics = cond("MetricsAvailable", "False", "MetricsUnavailable")
    assert health(rollout(state="Halted", conditions=[metrics]))["status"] == "Degraded"


# --- the Go test's sample statuses, in Lua 5.1 too ----------------------------------------------

HEALTH_CASES = json.loads((ARGOCD / "luatest" / "testdata" / "health.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", HEALTH_CASES, ids=[c["name"] for c in HEALTH_CASES])
def test_sample_statuses_agree_with_gopher_lua_expectations(case: dict) -> None:
    # gitops/argocd/luatest runs the same cases in Argo CD's gopher-lua VM (test_argocd_gopher_lua.py).
    got = health(case["obj"])
    assert got["status"] == case["status"], got
    if "message" in case:
        assert got["message"] == case["message"]
    for part in case.get("messageContains", []):
        assert part in got["message"]


def test_health_lua_uses_no_library_argo_cd_leaves_closed() -> None:
    # Argo CD opens base, table and package only (no useOpenLibs): see gitops/argocd/README.md.
    code = "\n".join(line.split("--", 1)[0] for line in HEALTH_LUA.read_text(encoding="utf-8").splitlines())
    assert not re.search(r"\b(string|math|os|io|debug|coroutine)\s*\.", code)
    assert not re.search(r"[\w)\]\"']\s*:\s*[A-Za-z_]\w*\s*\(", code), "s:method() needs the string library"


# --- argocd-cm patch in sync, ignoreDifferences ----------------------------------------------


def test_argocd_cm_patch_is_rendered_from_health_lua() -> None:
    lua = HEALTH_LUA.read_text(encoding="utf-8")
    patch_text = (ARGOCD / "argocd-cm-patch.yaml").read_text(encoding="utf-8")
    assert patch_text == render.render(lua), "run: python3 gitops/argocd/render.py"
    patch = yaml.safe_load(patch_text)
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    assert set(patch["data"]) == {render.KEY, render.ACTIONS_KEY}
    assert patch["data"][render.KEY] == lua
    # Argo CD's ResourceActions: discovery.lua + definitions [{name, action.lua}], byte for byte.
    actions = yaml.safe_load(patch["data"][render.ACTIONS_KEY])
    assert actions["discovery.lua"] == (ARGOCD / "actions" / "discovery.lua").read_text(encoding="utf-8")
    assert [d["name"] for d in actions["definitions"]] == list(render.ACTION_NAMES)
    for d in actions["definitions"]:
        assert d["action.lua"] == (ARGOCD / "actions" / d["name"] / "action.lua").read_text(encoding="utf-8")
    assert not any(key.startswith("resource.customizations.useOpenLibs") for key in patch["data"])


def test_render_check_cli() -> None:
    done = subprocess.run(
        [sys.executable, str(ARGOCD / "render.py"), "--check"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr


OWNED_ENV = (
    "GRINDER_FILL_MODEL_ENFORCE",
    "GRINDER_FILL_PROB_ENFORCE_SYMBOLS",
    "GRINDER_FILL_PROB_AUTO_THRESHOLD",
    "GRINDER_FILL_PROB_MIN_BPS",
)


def _ignore_rules() -> list[dict]:
    doc = yaml.safe_load((ARGOCD / "ignore-differences.yaml").read_text(encoding="utf-8"))
    assert "RespectIgnoreDifferences=true" in doc["spec"]["syncPolicy"]["syncOptions"]
    return doc["spec"]["ignoreDifferences"]


def test_ignore_differences_names_every_owned_field() -> None:
    (rule,) = _ignore_rules()
    assert (rule["group"], rule["kind"]) == ("apps", "Deployment")
    text = "\n".join(rule["jqPathExpressions"])
    for key in OWNED_ENV:
        assert f'"{key}"' in text
    assert '"grinder.io/restart-token"' in text


def _deployment(env: list[dict], annotations: dict) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "grinder"},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"name": "grinder", "env": env}, {"name": "sidecar", "image": "x"}]},
            }
        },
    }


def _normalize(obj: dict, expressions: list[str]) -> dict:
    # Argo CD's jq normalizer deletes each path expression: del(<expr>).
    jq = shutil.which("jq")
    if jq is None:
        pytest.fail("jq not found: run `make testbed-build` (installs Debian's jq) or apt-get install jq")
    program = " | ".join(f"del({e})" for e in expressions)
    done = subprocess.run([jq, "-c", program], input=json.dumps(obj), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_ignore_differences_hides_operator_changes_only() -> None:
    (rule,) = _ignore_rules()
    base_env = [
        {"name": "GRINDER_FILL_MODEL_DIR", "value": "/m"},
        {"name": "GRINDER_FILL_MODEL_ENFORCE", "value": "0"},
        {"name": "GRINDER_FILL_PROB_MIN_BPS", "value": "2500"},
    ]
    desired = _deployment(copy.deepcopy(base_env), {"prometheus.io/scrape": "true"})
    live = _deployment(
        [
            {"name": "GRINDER_FILL_MODEL_DIR", "value": "/m"},
            {"name": "GRINDER_FILL_MODEL_ENFORCE", "value": "1"},
            {"name": "GRINDER_FILL_PROB_MIN_BPS", "value": "3000"},
            {"name": "GRINDER_FILL_PROB_ENFORCE_SYMBOLS", "value": "SYM1,SYM2"},
            {"name": "GRINDER_FILL_PROB_AUTO_THRESHOLD", "value": "0"},
        ],
        {"prometheus.io/scrape": "true", "grinder.io/restart-token": "canary-1"},
    )
    assert _normalize(live, rule["jqPathExpressions"]) == _normalize(desired, rule["jqPathExpressions"])

    # Someone else's change still shows.
    drifted = copy.deepcopy(live)
    drifted["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "/other"
    assert _normalize(drifted, rule["jqPathExpressions"]) != _normalize(desired, rule["jqPathExpressions"])
