"""`kubectl fillprob plan` (and the pure renderers) without a cluster: KUBECONFIG=/nonexistent."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from fillprob_operator import cli, cli_render
from fillprob_operator.api import parse_spec
from fillprob_operator.domain.ladder import build_ladder
from fillprob_operator.validation import invalid_message, validate_manifest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fillprobrollout.yaml"


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def write(tmp_path: Path, doc: dict | str, name: str = "rollout.yaml") -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_valid_example_prints_every_steps_env(capsys):
    code, out, err = run(capsys, "plan", "-f", str(EXAMPLE))
    assert code == cli.EXIT_OK, err
    assert "FillProbRollout grinder: valid" in out
    spec = parse_spec(example()["spec"])
    for step in build_ladder(spec):  # the domain's ladder, not a copy of it
        patch = step.env(spec.min_bps)
        assert f"{step.label}   observe >= 20s" in out
        for key, value in patch.set_env.items():
            assert f"{key}={value}" in out
    assert "GRINDER_FILL_PROB_ENFORCE_SYMBOLS=SYM1,SYM2,SYM3,SYM4 " in out
    assert "GRINDER_FILL_PROB_ENFORCE_SYMBOLS= GRINDER_FILL_PROB_AUTO_THRESHOLD=1" in out
    assert "-GRINDER_FILL_PROB_ENFORCE_SYMBOLS (removed)" in out  # Shadow
    # gates, from the domain's table
    assert "CB trip (cb_trips_total > 0 or FILL_PROB_CIRCUIT_BREAKER_TRIPPED) -> R3" in out
    assert "mode=auto_apply" in out and "mode=recommend_only" in out
    assert "R3: GRINDER_FILL_PROB_AUTO_THRESHOLD=0" in out
    assert "thresholdRange 1000..5000 bps" in out


def test_plan_lower_target_marks_steps_not_walked(tmp_path, capsys):
    doc = example()
    doc["spec"]["targetPhase"] = "Canary"
    code, out, _ = run(capsys, "plan", "-f", write(tmp_path, doc))
    assert code == 0
    assert "3. Expand 1/2: not walked (above targetPhase Canary)" in out
    assert "6. AutoThreshold: not walked" in out


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.update(expandBatches=[["SYM1"]]),  # SYM1 in canary and a batch
        lambda s: s.pop("canarySymbols"),  # required for a non-Shadow target
        lambda s: s.update(safeSymbols=["SYM9"]),  # not a subset
        lambda s: s.update(targetPhase="Everything"),  # bad enum
        lambda s: s["observation"].update(canary="ten minutes"),  # bad duration
        lambda s: s.update(canaryymbols=["SYM1"]),  # unknown field (strict decoding)
    ],
    ids=["duplicate-symbol", "canary-missing", "safe-not-subset", "bad-enum", "bad-duration", "unknown-field"],
)
def test_plan_invalid_spec_exits_2_with_the_api_servers_message(tmp_path, capsys, mutate):
    doc = example()
    mutate(doc["spec"])
    path = write(tmp_path, doc)
    code, out, err = run(capsys, "plan", "-f", path)
    assert code == cli.EXIT_INVALID
    expected = invalid_message("FillProbRollout.grinder.io", "grinder", validate_manifest(doc))
    assert err.strip() == f"{path}: {expected}"
    assert "valid" not in out


def test_plan_exit_codes_for_bad_input(tmp_path, capsys):
    assert run(capsys, "plan", "-f", str(tmp_path / "missing.yaml"))[0] == cli.EXIT_USAGE
    assert run(capsys, "plan", "-f", write(tmp_path, "a: [b"))[0] == cli.EXIT_INVALID
    code, _, err = run(capsys, "plan", "-f", write(tmp_path, {"kind": "Deployment"}))
    assert code == cli.EXIT_INVALID and "no FillProbRollout" in err
    assert run(capsys, "plan")[0] == cli.EXIT_USAGE  # -f is required
    assert run(capsys, "frobnicate")[0] == cli.EXIT_USAGE
    assert run(capsys)[0] == cli.EXIT_USAGE


def test_plan_picks_rollouts_out_of_a_multi_document_file(tmp_path, capsys):
    deployment = yaml.safe_load((REPO / "examples" / "grinder-deployment.yaml").read_text())
    text = yaml.safe_dump(deployment) + "---\n" + EXAMPLE.read_text()
    code, out, _ = run(capsys, "plan", "-f", write(tmp_path, text))
    assert code == 0 and "FillProbRollout grinder: valid" in out


def test_commands_needing_a_cluster_exit_4_without_one(capsys, monkeypatch, tmp_path):
    # No cluster whatever the shell running the tests has (a testbed's KUBECONFIG exported).
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, _, err = run(capsys, "plan", "-f", str(EXAMPLE), "--live")
    assert code == cli.EXIT_UNREACHABLE and "no cluster configured" in err
    assert run(capsys, "status")[0] == cli.EXIT_UNREACHABLE
    assert run(capsys, "rollback", "grinder", "R3", "--reason", "test")[0] == cli.EXIT_UNREACHABLE
    assert run(capsys, "suspend", "grinder")[0] == cli.EXIT_UNREACHABLE


def test_rollback_validates_its_arguments(capsys):
    assert run(capsys, "rollback", "grinder", "R4", "--reason", "x")[0] == cli.EXIT_USAGE
    assert run(capsys, "rollback", "grinder", "R1")[0] == cli.EXIT_USAGE  # --reason is required


def test_help_documents_the_exit_codes(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for line in ("2   invalid spec", "3   not found", "4   no cluster", "5   forbidden", "64  usage"):
        assert line in out


def test_console_script_module_runs_without_a_cluster(tmp_path):
    env = {"KUBECONFIG": "/nonexistent", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "fillprob_operator.cli", "plan", "-f", str(EXAMPLE)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "AutoThreshold" in proc.stdout


# --------------------------------------------------------------------------- pure rendering

NOW = datetime(2026, 1, 1, 12, 0, 30, tzinfo=timezone.utc)


def _at(seconds: int) -> str:
    return (NOW + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def rollout_object() -> dict:
    doc = example()
    doc["metadata"].update(namespace="demo", generation=1, creationTimestamp=_at(-60))
    doc["status"] = {
        "phase": "Expand", "batch": 1, "step": "Expand 1/2", "state": "Observing", "observedGeneration": 1,
        "enforcedSymbols": ["SYM1", "SYM2", "SYM3", "SYM4"], "enforcedSymbolCount": 4,
        "lastKnownGoodSymbols": ["SYM1", "SYM2"],
        "observationStartedAt": _at(-10), "observationEndsAt": _at(10),
        "threshold": {"configuredBps": 2500, "recommendedBps": 2600, "effectiveBps": 2500, "mode": "recommend_only"},
        "conditions": [{"type": "Ready", "status": "False", "reason": "Progressing", "message": "walking",
                        "lastTransitionTime": _at(-30)}],
        "history": [
            {"at": _at(-50), "phase": "Shadow", "step": "Shadow", "action": "RestartIssued", "reason": "StepStarted"},
            {"at": _at(-40), "phase": "Shadow", "step": "Shadow", "action": "StepPassed",
             "reason": "ObservationPassed", "evidence": {"cbTrips": {"a": 0, "b": 0}, "blocks": {"a": 0, "b": 0}}},
            {"at": _at(-35), "phase": "Canary", "step": "Canary", "action": "RestartIssued", "reason": "StepStarted"},
            {"at": _at(-20), "phase": "Canary", "step": "Canary", "action": "StepPassed",
             "reason": "ObservationPassed",
             "evidence": {"cbTrips": {"a": 0, "b": 1}, "blocks": {"a": 30, "b": 12},
                          "autoThresholdBps": {"a": 2600.0, "b": 2600.0}, "restartToken": "1-2"}},
        ],
    }
    return doc


def test_render_status_marks_the_current_step_and_window():
    text = cli_render.render_status(rollout_object(), NOW)
    assert "State:       Observing   step Expand 1/2" in text
    assert "10s / 20s" in text
    lines = text.splitlines()
    current = next(line for line in lines if "Expand 1/2" in line and "+SYM3,SYM4" in line)
    assert current.lstrip().startswith(">") and "Observing" in current
    assert any("Shadow" in line and "passed in 10s" in line for line in lines)
    assert any("Canary" in line and "passed in 15s" in line for line in lines)
    assert any("Expand 2/2" in line and "next" in line for line in lines)
    assert "configured 2500 bps, recommended 2600 bps" in text
    # timeline evidence is compact: per-pod counters summed, gauges deduplicated, tokens dropped
    assert "cbTrips=1 blocks=42 autoThresholdBps=2600" in text
    assert "restartToken" not in text


def test_render_list_has_the_printer_columns():
    text = cli_render.render_list([rollout_object()], NOW)
    header, row = text.splitlines()
    assert header.split() == ["NAME", "TARGET", "PHASE", "STEP", "STATE", "SYMBOLS", "WINDOW", "AGE"]
    assert row.split()[:8] == ["grinder", "AutoThreshold", "Expand", "Expand", "1/2", "Observing", "4", "10s"]


def test_plan_live_marks_done_now_and_next():
    spec = parse_spec(example()["spec"])
    lines = "\n".join(cli_render.plan_lines(spec, "grinder", "demo", rollout_object()["status"], live=True))
    assert "2. Canary   observe >= 20s   [live: done]" in lines
    assert "3. Expand 1/2   observe >= 20s   [live: NOW, Observing]" in lines
    assert "4. Expand 2/2   observe >= 20s   [live: next]" in lines


def test_render_status_after_a_rollback_never_shows_a_next_step():
    obj = rollout_object()
    st = obj["status"]
    st.update(phase="Canary", batch=None, step="Canary (R2)", state="RolledBack",
              lastRollback={"playbook": "R2", "reason": "CircuitBreakerTripped", "at": _at(-1),
                            "evidence": {"cbTrips": {"a": 1, "b": 2}}})
    st["history"].append({"at": _at(-15), "phase": "Expand", "step": "Expand 1/2", "action": "RestartIssued",
                          "reason": "StepStarted"})
    lines = cli_render.render_status(obj, NOW).splitlines()
    assert any("Expand 1/2" in line and "rolled back from here" in line for line in lines)
    assert any("Expand 2/2" in line and "held (a spec change re-arms)" in line for line in lines)
    assert not any(line.rstrip().endswith("next") or " next " in line for line in lines)
    assert any(line.startswith("Rollback:    R2 CircuitBreakerTripped") for line in lines)
    assert any("evidence: cbTrips=3" in line for line in lines)
