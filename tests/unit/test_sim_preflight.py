"""Preflight script (runbook 32 Phase 0.2) run exactly as the operator's default Job command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim_support import SIM_ROOT, write_model_dirs


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return write_model_dirs(tmp_path, 3100)


def preflight(*args: str, min_bps: str | None = "2500") -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if min_bps is not None:
        env["GRINDER_FILL_PROB_MIN_BPS"] = min_bps
    return subprocess.run(
        [sys.executable, "-m", "scripts.preflight_fill_prob", *args], cwd=SIM_ROOT, env=env, capture_output=True, text=True, timeout=30
    )


def test_pass_auto_threshold(dirs):
    model, ev = dirs
    r = preflight("--model", str(model), "--eval", str(ev), "--auto-threshold")
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    assert not [line for line in lines if line.startswith("FAIL")]
    assert {"PASS model_manifest", "PASS model_file", "PASS eval_report", "PASS eval_manifest"} <= set(lines)
    assert {"configured_bps=2500", "recommended_bps=3100", "effective_bps=3100", "mode=auto_apply"} <= set(lines)


def test_pass_recommend_only(dirs):
    model, ev = dirs
    r = preflight("--model", str(model), "--eval", str(ev))
    assert r.returncode == 0
    assert {"configured_bps=2500", "recommended_bps=3100", "effective_bps=2500", "mode=recommend_only"} <= set(r.stdout.splitlines())


@pytest.mark.parametrize("missing", ["model/model.json", "model/manifest.json", "eval/eval_report.json", "eval/manifest.json"])
def test_fail_when_a_required_file_is_missing(dirs, missing):
    model, ev = dirs
    (model.parent / missing).unlink()
    r = preflight("--model", str(model), "--eval", str(ev), "--auto-threshold")
    assert r.returncode == 1
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 1 and missing.split("/")[1] in fails[0]


def test_fail_on_bad_report_and_unexpanded_dir(dirs):
    model, ev = dirs
    (ev / "eval_report.json").write_text('{"recommended_bps": "high"}')
    r = preflight("--model", "$(GRINDER_FILL_MODEL_DIR)", "--eval", str(ev), "--auto-threshold")
    assert r.returncode == 1
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL ")]
    assert any(f.startswith("FAIL model_dir:") and "unexpanded" in f for f in fails)
    assert any(f.startswith("FAIL eval_report:") and "recommended_bps" in f for f in fails)


def test_fail_without_arguments_or_with_bad_min_bps(dirs):
    r = preflight()
    assert r.returncode == 1 and "FAIL model_dir: --model is missing" in r.stdout and "FAIL eval_dir:" in r.stdout
    model, ev = dirs
    r = preflight("--model", str(model), "--eval", str(ev), min_bps="lots")
    assert r.returncode == 1 and "FAIL configured_bps:" in r.stdout
