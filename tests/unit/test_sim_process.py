"""Grinder simulator as a real process on 127.0.0.1 (kernel-chosen free port): startup lines,
artifacts, HTTP endpoints, faults, breaker log, SIGTERM."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sim_support import SIM_ROOT, SimProcess, write_model_dirs


@pytest.fixture
def run_sim():
    procs: list[SimProcess] = []

    def start(env: dict[str, str], module: bool = True) -> SimProcess:
        cmd = [sys.executable, "-m", "grinder_sim"] if module else [sys.executable, "grinder_sim.py"]
        p = SimProcess("grinder_sim", cmd, env, seed="11", cwd=SIM_ROOT)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    return write_model_dirs(tmp_path).env(artifacts=tmp_path / "artifacts")


STARTING_STATE = {"GRINDER_FILL_MODEL_ENFORCE": "0", "GRINDER_FILL_PROB_AUTO_THRESHOLD": "0", "GRINDER_FILL_PROB_MIN_BPS": "2500"}
RESOLUTION_PREFIXES = ("FILL_PROB_THRESHOLD_RESOLUTION_OK", "FILL_PROB_THRESHOLD_RESOLUTION_FAILED", "THRESHOLD_RESOLVE_SKIPPED")


def resolution_lines(p: SimProcess) -> list[str]:
    return [line for line in p.lines if line.startswith(RESOLUTION_PREFIXES)]


def test_shadow_start_recommend_only_artifact_and_sigterm(run_sim, dirs):
    p = run_sim({**dirs, **STARTING_STATE}, module=False).started()
    assert p.lines[0] == "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only recommended_bps=3000 configured_bps=2500 effective_bps=2500"
    assert len(resolution_lines(p)) == 1
    artifacts = sorted(Path(dirs["GRINDER_ARTIFACT_DIR"]).glob("threshold_resolution_*.json"))
    assert len(artifacts) == 1
    assert json.loads(artifacts[0].read_text())["resolution"]["status"] == "ok"
    assert p.get("/healthz")[0] == 200 and p.get("/readyz")[0] == 200
    # Phase 1 table: enforce 0, threshold gauge > 0 (recommended), blocks 0, cb trips 0.
    p.wait_metric("grinder_router_orders_total", lambda v: v >= 20, (("symbol", "SYM8"),))
    m = p.samples()
    assert m[("grinder_router_fill_prob_enforce_enabled", ())] == 0
    assert m[("grinder_router_fill_prob_enforce_allowlist_enabled", ())] == 0
    assert m[("grinder_router_fill_prob_auto_threshold_bps", ())] == 3000
    assert m[("grinder_router_fill_prob_cb_trips_total", ())] == 0
    assert sum(v for (n, _), v in m.items() if n == "grinder_router_fill_prob_blocks_total") == 0
    state = json.loads(p.get("/sim/state")[1])
    assert state["resolution"]["status"] == "ok" and set(state["symbols"]) == {f"SYM{i}" for i in range(1, 9)}
    assert p.stop() == 0
    assert p.lines[-1] == "GRINDER_SIM_STOPPING"


def test_restart_writes_a_new_artifact(run_sim, dirs):
    for _ in range(2):
        p = run_sim({**dirs, **STARTING_STATE}).started()
        assert p.stop() == 0
    assert len(list(Path(dirs["GRINDER_ARTIFACT_DIR"]).glob("threshold_resolution_*.json"))) == 2


def test_auto_apply_start_and_threshold_jump(run_sim, dirs):
    env = {**dirs, **STARTING_STATE, "GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "", "GRINDER_FILL_PROB_AUTO_THRESHOLD": "1"}
    p = run_sim(env).started()
    assert resolution_lines(p) == ["FILL_PROB_THRESHOLD_RESOLUTION_OK mode=auto_apply recommended_bps=3000 configured_bps=2500 effective_bps=3000"]
    m = p.samples()
    assert m[("grinder_router_fill_prob_auto_threshold_bps", ())] == 3000
    assert m[("grinder_router_fill_prob_enforce_enabled", ())] == 1
    assert m[("grinder_router_fill_prob_enforce_allowlist_enabled", ())] == 0  # empty = all symbols
    code, state = p.post("/sim/faults", b'{"thresholdJumpBps": 2500}')
    assert code == 200 and state["effectiveBps"] == 5500 and state["thresholdJumpBps"] == 2500
    assert p.samples()[("grinder_router_fill_prob_auto_threshold_bps", ())] == 5500
    assert p.post("/sim/faults", b"{}") == (200, {**state, "thresholdJumpBps": 0, "effectiveBps": 3000, "recommendedBps": 3000})
    assert p.samples()[("grinder_router_fill_prob_auto_threshold_bps", ())] == 3000


@pytest.mark.parametrize("breakage, reason", [("report", "eval_report_missing"), ("json", "eval_report_invalid_json"), ("model", "model_files_missing")])
def test_resolution_failed_start(run_sim, dirs, breakage, reason):
    if breakage == "report":
        os.unlink(Path(dirs["GRINDER_FILL_PROB_EVAL_DIR"]) / "eval_report.json")
    elif breakage == "json":
        (Path(dirs["GRINDER_FILL_PROB_EVAL_DIR"]) / "eval_report.json").write_text("{oops")
    else:
        os.unlink(Path(dirs["GRINDER_FILL_MODEL_DIR"]) / "manifest.json")
    p = run_sim({**dirs, **STARTING_STATE}).started()
    lines = resolution_lines(p)
    assert len(lines) == 1 and lines[0].startswith(f"FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code={reason} detail=")
    assert p.samples()[("grinder_router_fill_prob_auto_threshold_bps", ())] == 0
    assert len(list(Path(dirs["GRINDER_ARTIFACT_DIR"]).glob("threshold_resolution_*.json"))) == 1


def test_model_dir_unset_is_skipped(run_sim, dirs):
    env = {**dirs, **STARTING_STATE}
    del env["GRINDER_FILL_MODEL_DIR"]
    p = run_sim(env).started()
    assert resolution_lines(p) == ["THRESHOLD_RESOLVE_SKIPPED reason=model_dir_unset"]
    assert p.samples()[("grinder_router_fill_prob_auto_threshold_bps", ())] == 0


def test_canary_allowlist_blocks_only_allowlisted(run_sim, dirs):
    env = {**dirs, **STARTING_STATE, "GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "SYM1,SYM2", "GRINDER_SIM_ORDERS_PER_SEC": "400"}
    p = run_sim(env).started()
    p.wait_metric("grinder_router_orders_total", lambda v: v >= 400, (("symbol", "SYM3"),))
    m = p.samples()
    assert m[("grinder_router_fill_prob_enforce_allowlist_enabled", ())] == 1
    for i in range(1, 9):
        blocks = m[("grinder_router_fill_prob_blocks_total", (("symbol", f"SYM{i}"),))]
        assert (blocks > 0) if i <= 2 else (blocks == 0), (i, blocks)
    assert m[("grinder_router_fill_prob_cb_trips_total", ())] == 0


def test_high_min_bps_trips_breaker_with_log_line(run_sim, dirs):
    env = {**dirs, **STARTING_STATE, "GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "SYM1", "GRINDER_FILL_PROB_MIN_BPS": "9800", "GRINDER_SIM_ORDERS_PER_SEC": "200"}
    p = run_sim(env).started()
    line = p.wait_line("FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=")
    assert " rate_pct=" in line and "symbol=SYM1" in line
    p.wait_metric("grinder_router_fill_prob_cb_trips_total", lambda v: v == 1)


def test_faults_endpoint(run_sim, dirs):
    env = {**dirs, **STARTING_STATE, "GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "SYM1,SYM2", "GRINDER_SIM_ORDERS_PER_SEC": "200"}
    p = run_sim(env).started()
    code, body = p.post("/sim/faults", b"{not json")
    assert code == 400 and "JSON" in body["error"]
    code, body = p.post("/sim/faults", b'{"bogus": 1}')
    assert code == 400 and "bogus" in body["error"]

    code, body = p.post("/sim/faults", b'{"cbTrip": true}')
    assert code == 200 and body["injectedCbTrips"] == 1
    assert p.samples()[("grinder_router_fill_prob_cb_trips_total", ())] == 1
    assert "symbol=SYM1" in p.wait_line("FILL_PROB_CIRCUIT_BREAKER_TRIPPED ")

    code, body = p.post("/sim/faults", b'{"blockAll": true}')
    assert code == 200 and body["blockAll"] is True
    # Every enforced order now blocked: the block rate trips SYM1 and SYM2 (1 injected + 2).
    p.wait_metric("grinder_router_fill_prob_cb_trips_total", lambda v: v == 3)
    before = p.samples()
    p.wait_metric("grinder_router_orders_total", lambda v: v >= before[("grinder_router_orders_total", (("symbol", "SYM1"),))] + 60, (("symbol", "SYM1"),))
    after = p.samples()
    sym1 = (("symbol", "SYM1"),)
    new_orders = after[("grinder_router_orders_total", sym1)] - before[("grinder_router_orders_total", sym1)]
    new_blocks = after[("grinder_router_fill_prob_blocks_total", sym1)] - before[("grinder_router_fill_prob_blocks_total", sym1)]
    assert new_blocks == new_orders
    assert after[("grinder_router_fill_prob_blocks_total", (("symbol", "SYM3"),))] == 0

    code, body = p.post("/sim/faults", b"{}")
    assert code == 200 and body["blockAll"] is False and body["thresholdJumpBps"] == 0
    assert json.loads(p.get("/sim/faults")[1])["blockAll"] is False
