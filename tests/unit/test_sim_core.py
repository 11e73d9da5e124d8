"""Grinder simulator core, in-process: config, threshold resolution, gate, breaker, faults, metrics."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sim_support import SIM_ROOT, write_model_dirs

sys.path.insert(0, str(SIM_ROOT))

import grinder_sim as gs  # noqa: E402


def make_sim(lines: list[str] | None = None, *, env: dict | None = None, resolution: gs.Resolution | None = None, seed: int = 7):
    config = gs.Config.from_env(env or {})
    resolution = resolution or gs.Resolution("ok", gs.MODE_RECOMMEND_ONLY, config.configured_bps, recommended_bps=3000)
    out = lines if lines is not None else []
    return gs.Simulator(config, resolution, rng=random.Random(seed), emit=out.append)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    got = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return got


# ------------------------------------------------------------------------- config


def test_config_defaults_are_runbook_starting_state():
    c = gs.Config.from_env({})
    assert (c.enforce, c.auto_threshold, c.allowlist, c.configured_bps) == (False, False, (), 2500)
    assert c.symbols == tuple(f"SYM{i}" for i in range(1, 9))
    assert (c.pod_ip, c.port, c.orders_per_sec, c.cb_block_rate) == ("127.0.0.1", 9090, 20.0, 0.9)


@pytest.mark.parametrize(
    "raw, allowlist",
    [(None, ()), ("", ()), ("  ", ()), ("SYM1,SYM2", ("SYM1", "SYM2")), (" SYM1 , ,SYM2,SYM1", ("SYM1", "SYM2"))],
)
def test_enforce_symbols_unset_or_empty_means_all(raw, allowlist):
    env = {"GRINDER_FILL_MODEL_ENFORCE": "1"}
    if raw is not None:
        env["GRINDER_FILL_PROB_ENFORCE_SYMBOLS"] = raw
    c = gs.Config.from_env(env)
    assert c.allowlist == allowlist
    assert c.allowlist_enabled == bool(allowlist)
    assert c.enforced("SYM1") and c.enforced("SYM2")
    assert c.enforced("SYM3") == (not allowlist)


@pytest.mark.parametrize("name, value", [("GRINDER_FILL_PROB_MIN_BPS", "abc"), ("GRINDER_FILL_PROB_MIN_BPS", "10001"), ("GRINDER_SIM_CB_BLOCK_RATE", "2")])
def test_invalid_numbers_are_config_errors(name, value):
    with pytest.raises(gs.ConfigError, match=name):
        gs.Config.from_env({name: value})


# ------------------------------------------------------------------------- resolution


def test_resolution_ok_recommend_only_uses_configured(tmp_path):
    model, ev = write_model_dirs(tmp_path, 3000)
    r = gs.resolve_threshold(str(model), str(ev), 2500, auto_threshold=False)
    assert r.log_line() == "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only recommended_bps=3000 configured_bps=2500 effective_bps=2500"


def test_resolution_ok_auto_apply_uses_recommended(tmp_path):
    model, ev = write_model_dirs(tmp_path, 3000)
    r = gs.resolve_threshold(str(model), str(ev), 2500, auto_threshold=True)
    assert r.log_line() == "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=auto_apply recommended_bps=3000 configured_bps=2500 effective_bps=3000"


def test_resolution_skipped_without_model_dir(tmp_path):
    r = gs.resolve_threshold(None, None, 2500, auto_threshold=False)
    assert r.log_line() == "THRESHOLD_RESOLVE_SKIPPED reason=model_dir_unset"
    assert r.effective_bps == 2500


@pytest.mark.parametrize(
    "breakage, reason",
    [
        ("no_report", "eval_report_missing"),
        ("bad_json", "eval_report_invalid_json"),
        ("no_key", "recommended_bps_missing"),
        ("str_value", "recommended_bps_invalid"),
        ("no_model", "model_files_missing"),
        ("no_eval_dir", "eval_dir_unset"),
    ],
)
def test_resolution_failed_reasons(tmp_path, breakage, reason):
    model, ev = write_model_dirs(tmp_path)
    report = ev / "eval_report.json"
    eval_dir: str | None = str(ev)
    if breakage == "no_report":
        report.unlink()
    elif breakage == "bad_json":
        report.write_text("{not json")
    elif breakage == "no_key":
        report.write_text("{}")
    elif breakage == "str_value":
        report.write_text('{"recommended_bps": "3000"}')
    elif breakage == "no_model":
        (model / "model.json").unlink()
    elif breakage == "no_eval_dir":
        eval_dir = None
    r = gs.resolve_threshold(str(model), eval_dir, 2500, auto_threshold=True)
    line = r.log_line()
    assert line.startswith(f"FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code={reason} detail=")
    assert "\n" not in line
    assert r.effective_bps == 2500  # falls back to the configured threshold


def test_artifacts_never_overwrite_each_other(tmp_path):
    config = gs.Config.from_env({})
    r = gs.resolve_threshold(None, None, 2500, False)
    paths = {gs.write_resolution_artifact(str(tmp_path / "a"), r, config) for _ in range(5)}
    assert len(paths) == 5
    for p in paths:
        assert os.path.basename(p).startswith("threshold_resolution_") and p.endswith("Z.json")
        assert json.loads(Path(p).read_text())["resolution"]["status"] == "skipped"
    assert sorted(os.listdir(tmp_path / "a")) == sorted(os.path.basename(p) for p in paths)


# ------------------------------------------------------------------------- gate


def test_block_ratio_tracks_threshold_for_enforced_symbols():
    sim = make_sim(env={"GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_MIN_BPS": "2500"})
    for _ in range(100):
        sim.advance(10.0)  # 200 orders per symbol per call
    for name, st in sim.symbols.items():
        assert st.orders == 20000
        assert abs(st.blocks / st.orders - 0.25) < 0.015, name
    assert sim.cb_trips_total == 0


def test_allowlist_never_blocks_other_symbols():
    sim = make_sim(env={"GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "SYM1,SYM2", "GRINDER_FILL_PROB_MIN_BPS": "9800"})
    sim.advance(100.0)
    assert sim.symbols["SYM1"].blocks > 0 and sim.symbols["SYM2"].blocks > 0
    assert all(sim.symbols[s].blocks == 0 for s in sim.symbols if s not in ("SYM1", "SYM2"))
    assert all(sim.symbols[s].orders == 2000 for s in sim.symbols)


def test_shadow_never_blocks_even_with_block_all():
    lines: list[str] = []
    sim = make_sim(lines, env={"GRINDER_FILL_MODEL_ENFORCE": "0", "GRINDER_FILL_PROB_MIN_BPS": "10000"})
    sim.apply_faults({"blockAll": True})
    sim.advance(50.0)
    assert sum(st.blocks for st in sim.symbols.values()) == 0
    assert sim.cb_trips_total == 0
    assert not any(line.startswith("FILL_PROB_CIRCUIT_BREAKER_TRIPPED") for line in lines)


def test_failed_resolution_enforces_configured_threshold():
    config = gs.Config.from_env({"GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_MIN_BPS": "5000"})
    r = gs.Resolution("failed", gs.MODE_AUTO_APPLY, 5000, reason_code="eval_report_missing", detail="x")
    sim = gs.Simulator(config, r, rng=random.Random(3), emit=lambda _: None)
    sim.advance(500.0)
    st = sim.symbols["SYM1"]
    assert abs(st.blocks / st.orders - 0.5) < 0.04
    assert sim.auto_threshold_gauge == 0


# ------------------------------------------------------------------------- breaker


def test_high_min_bps_trips_breaker_once_per_symbol():
    lines: list[str] = []
    sim = make_sim(lines, env={"GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "SYM1", "GRINDER_FILL_PROB_MIN_BPS": "9800"})
    sim.advance(2.0)  # 40 orders: window not full yet, no trip
    assert sim.cb_trips_total == 0
    sim.advance(100.0)
    trips = [line for line in lines if line.startswith("FILL_PROB_CIRCUIT_BREAKER_TRIPPED")]
    assert len(trips) == 1 and sim.cb_trips_total == 1  # latched: no spam
    fields = dict(kv.split("=", 1) for kv in trips[0].split()[1:])
    assert list(fields)[:2] == ["block_count", "rate_pct"]
    assert int(fields["block_count"]) > 45 and float(fields["rate_pct"]) > 90 and fields["symbol"] == "SYM1"


def test_breaker_rearms_after_rate_falls_and_can_trip_again():
    lines: list[str] = []
    config = gs.Config.from_env({"GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_AUTO_THRESHOLD": "1", "GRINDER_SIM_SYMBOLS": "SYM1"})
    r = gs.Resolution("ok", gs.MODE_AUTO_APPLY, 2500, recommended_bps=2500)
    sim = gs.Simulator(config, r, rng=random.Random(5), emit=lines.append)
    sim.apply_faults({"blockAll": True})
    sim.advance(10.0)
    assert sim.cb_trips_total == 1 and sim.symbols["SYM1"].tripped
    sim.apply_faults({"blockAll": False, "thresholdJumpBps": -2500})  # effective 0: nothing blocked
    sim.advance(10.0)
    assert not sim.symbols["SYM1"].tripped
    assert any(line.startswith("FILL_PROB_CIRCUIT_BREAKER_REARMED symbol=SYM1") for line in lines)
    sim.apply_faults({"blockAll": True})
    sim.advance(10.0)
    assert sim.cb_trips_total == 2


# ------------------------------------------------------------------------- faults


def test_fault_cb_trip_counts_and_logs_once():
    lines: list[str] = []
    sim = make_sim(lines, env={"GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "SYM2"})
    state = sim.apply_faults({"cbTrip": True})
    assert sim.cb_trips_total == 1 and state["injectedCbTrips"] == 1
    trip = [line for line in lines if line.startswith("FILL_PROB_CIRCUIT_BREAKER_TRIPPED ")]
    assert len(trip) == 1 and "symbol=SYM2" in trip[0]  # first enforced symbol
    sim.apply_faults({"cbTrip": True, "symbol": "SYM5"})
    assert sim.cb_trips_total == 2 and sim.symbols["SYM5"].trips == 1


def test_fault_threshold_jump_moves_recommended_and_auto_apply_effective():
    rec = make_sim(env={"GRINDER_FILL_PROB_MIN_BPS": "2500"})
    rec.apply_faults({"thresholdJumpBps": 1500})
    assert (rec.auto_threshold_gauge, rec.effective_bps) == (4500, 2500)
    rec.apply_faults({"thresholdJumpBps": 1500})  # an offset, not cumulative
    assert rec.auto_threshold_gauge == 4500
    config = gs.Config.from_env({"GRINDER_FILL_PROB_AUTO_THRESHOLD": "1"})
    auto = gs.Simulator(config, gs.Resolution("ok", gs.MODE_AUTO_APPLY, 2500, recommended_bps=3000), emit=lambda _: None)
    auto.apply_faults({"thresholdJumpBps": 9000})
    assert (auto.auto_threshold_gauge, auto.effective_bps) == (10000, 10000)  # clamped
    auto.apply_faults({})
    assert (auto.auto_threshold_gauge, auto.effective_bps, auto.block_all) == (3000, 3000, False)


@pytest.mark.parametrize("body", [[], "x", {"nope": 1}, {"blockAll": "yes"}, {"thresholdJumpBps": 1.5}, {"thresholdJumpBps": True}, {"cbTrip": True, "symbol": "ZZZ"}])
def test_fault_validation(body):
    with pytest.raises(gs.FaultError):
        make_sim().apply_faults(body)


# ------------------------------------------------------------------------- metrics


def test_metrics_render_parses_with_expected_series():
    sim = make_sim(env={"GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "SYM1"})
    sim.advance(5.0)
    got = samples(sim.render_metrics())
    assert got[("grinder_router_fill_prob_enforce_enabled", ())] == 1
    assert got[("grinder_router_fill_prob_enforce_allowlist_enabled", ())] == 1
    assert got[("grinder_router_fill_prob_cb_trips_total", ())] == 0
    assert got[("grinder_router_fill_prob_auto_threshold_bps", ())] == 3000
    assert ("grinder_router_fill_prob_blocks_total", ()) not in got  # total = sum() of the per-symbol series
    for i in range(1, 9):
        key = (("symbol", f"SYM{i}"),)
        assert got[("grinder_router_orders_total", key)] == 100
        assert (got[("grinder_router_fill_prob_blocks_total", key)] > 0) == (i == 1)
    info = [k for k in got if k[0] == "grinder_sim_info"]
    assert dict(info[0][1])["effective_bps"] == "2500"
