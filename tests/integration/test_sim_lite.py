"""grinder-lite (sim/grinder-lite, Go) against the Python simulator it stands in for in `make bench`.

Both run for real, side by side on free loopback ports with the same environment: the Go binary
built by `go build` into a tmp dir, sim/grinder/grinder_sim.py under this venv's python. What
the operator and the bench read must be the same: the startup resolution line for OK, FAILED
and SKIPPED starts (read by the operator's own log scanner and parser), the /metrics families
(names, types, label names, HELP), counters moving as orders flow under the same enforcement
rules, a `cbTrip` fault's log line and counter, `blockAll` blocking every enforced order,
SIGTERM. What grinder-lite leaves out is listed at the top of its main.go.

Without `go` the tests skip, unless CI=true: then they fail (CI installs Go for the testbed).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fillprob_operator.adapters.logs import scan_line
from fillprob_operator.domain.log_gates import parse_resolution
from sim_support import SIM_ROOT, SimProcess, write_model_dirs

REPO = Path(__file__).resolve().parents[2]
PYTHON_SIM = SIM_ROOT / "grinder_sim.py"
LITE_SRC = REPO / "sim" / "grinder-lite"
DEADLINE = 20.0  # generous: the machine may be running a bench beside the tests
# The bench's grinder env (scripts/bench.py World.grinder) at a rate that fills counters fast.
ORDERS = {"GRINDER_SIM_SYMBOLS": "SYM1,SYM2,SYM3", "GRINDER_SIM_ORDERS_PER_SEC": "200"}
BENCH_BREAKER = {"GRINDER_SIM_CB_BLOCK_RATE": "1.0"}  # only a cbTrip fault trips the breaker
CANARY = {"GRINDER_FILL_MODEL_ENFORCE": "1", "GRINDER_FILL_PROB_ENFORCE_SYMBOLS": "SYM1,SYM2"}


@pytest.fixture(scope="module")
def lite_binary(tmp_path_factory) -> Path:
    go = shutil.which("go")
    if go is None:
        message = "go is not on PATH: cannot build sim/grinder-lite"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("grinder-lite") / "grinder-lite"
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
    proc = subprocess.run([go, "build", "-trimpath", "-o", str(out), "."], cwd=LITE_SRC, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"go build sim/grinder-lite: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.fixture
def run_both(lite_binary):
    """run_both(env) -> (python, lite), not waited for: both exit at the test's end."""
    sims: list[SimProcess] = []

    def start(env: dict[str, str]) -> tuple[SimProcess, SimProcess]:
        pair = (SimProcess("python", [sys.executable, str(PYTHON_SIM)], env, seed="7", deadline=DEADLINE),
                SimProcess("lite", [str(lite_binary)], env, seed="7", deadline=DEADLINE))
        sims.extend(pair)
        return pair

    yield start
    for sim in sims:
        sim.stop()


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, str]:
    """A model dir and an eval dir that resolve (recommended_bps 3000), as the testbed writes them."""
    return write_model_dirs(tmp_path, eval_manifest=False).env()


def per_symbol(samples: dict, name: str) -> dict[str, float]:
    return {dict(labels)["symbol"]: v for (n, labels), v in samples.items() if n == name}


# --------------------------------------------------------------------------- startup


def _break(dirs: dict[str, str], how: str) -> dict[str, str]:
    report = Path(dirs["GRINDER_FILL_PROB_EVAL_DIR"]) / "eval_report.json"
    if how == "report_missing":
        report.unlink()
    elif how == "model_missing":
        (Path(dirs["GRINDER_FILL_MODEL_DIR"]) / "model.json").unlink()
    elif how == "eval_unset":
        return {k: v for k, v in dirs.items() if k != "GRINDER_FILL_PROB_EVAL_DIR"}
    elif how == "model_unset":
        return {k: v for k, v in dirs.items() if k != "GRINDER_FILL_MODEL_DIR"}
    elif how.startswith("report="):
        report.write_text(how.removeprefix("report="))
    return dirs


STARTS = {
    # name: (breakage, extra env, the resolution line's start in both)
    "ok-recommend-only": ("", {}, "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=recommend_only recommended_bps=3000"),
    "ok-auto-apply": ("", {**CANARY, "GRINDER_FILL_PROB_AUTO_THRESHOLD": "1", "GRINDER_FILL_PROB_MIN_BPS": "2000"},
                      "FILL_PROB_THRESHOLD_RESOLUTION_OK mode=auto_apply recommended_bps=3000 configured_bps=2000 effective_bps=3000"),
    "failed-report-missing": ("report_missing", {}, "FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=eval_report_missing"),
    "failed-model-files": ("model_missing", {}, "FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=model_files_missing"),
    "failed-eval-unset": ("eval_unset", {"GRINDER_FILL_PROB_AUTO_THRESHOLD": "1"},
                          "FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=eval_dir_unset"),
    "failed-no-recommended": ("report=[1, 2]", {}, "FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=recommended_bps_missing"),
    "failed-out-of-range": ("report={\"recommended_bps\": 20000}", {},
                            "FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=recommended_bps_invalid"),
    "failed-not-an-int": ("report={\"recommended_bps\": 2500.5}", {},
                          "FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=recommended_bps_invalid"),
    "failed-invalid-json": ("report={oops", {}, "FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=eval_report_invalid_json"),
    "skipped": ("model_unset", {}, "THRESHOLD_RESOLVE_SKIPPED reason=model_dir_unset"),
}


@pytest.mark.parametrize("case", list(STARTS))
def test_the_same_startup_lines(run_both, dirs, case):
    breakage, extra, expected = STARTS[case]
    py, lite = (sim.started() for sim in run_both({**_break(dirs, breakage), **extra, **ORDERS}))
    # What the operator takes from each log: the first resolution line, by its own scanner.
    found = []
    for sim in (py, lite):
        resolution = [scan_line(line)[0] for line in sim.lines if scan_line(line)[0]]
        assert len(resolution) == 1, f"{sim.kind}: {sim.lines}"
        found.append(resolution[0])
    py_line, lite_line = found
    assert py_line.startswith(expected)
    if case == "failed-invalid-json":  # the parser's own words differ; the report's path does not
        py_line, lite_line = (line.split(".json: ", 1)[0] for line in found)
    assert lite_line == py_line
    parsed = [dataclasses.replace(parse_resolution(line), line="") for line in found]
    assert parsed[1] == parsed[0] and parsed[0].kind == case.split("-")[0]
    started = [re.sub(r" port=\d+ ", " port=N ", sim.wait_line("GRINDER_SIM_STARTED ")) for sim in (py, lite)]
    assert started[1] == started[0]
    # The gauges the resolution sets: the threshold gauge and grinder_sim_info's labels.
    gauges = [{k: v for k, v in sim.samples().items()
               if k[0] in ("grinder_router_fill_prob_auto_threshold_bps", "grinder_sim_info",
                           "grinder_router_fill_prob_enforce_enabled", "grinder_router_fill_prob_enforce_allowlist_enabled")}
              for sim in (py, lite)]
    assert gauges[1] == gauges[0]


def test_an_invalid_number_exits_2_in_both(run_both):
    py, lite = run_both({"GRINDER_FILL_PROB_MIN_BPS": "lots"})
    assert (py.proc.wait(DEADLINE), lite.proc.wait(DEADLINE)) == (2, 2)
    for sim in (py, lite):
        assert sim.wait_line("GRINDER_SIM_CONFIG_INVALID detail=GRINDER_FILL_PROB_MIN_BPS=")


# --------------------------------------------------------------------------- metrics


def test_the_same_metric_families(run_both, dirs):
    py, lite = (sim.started() for sim in run_both({**dirs, **CANARY, **ORDERS}))
    shapes = []
    for sim in (py, lite):
        assert sim.get("/healthz") == (200, "ok\n") and sim.get("/readyz") == (200, "ok\n")
        sim.wait_samples(lambda s: min(per_symbol(s, "grinder_router_orders_total").values()) > 0, "orders flowing")
        families = sim.families()
        shapes.append({
            f.name: (f.type, f.documentation, sorted({s.name for s in f.samples}),
                     sorted({tuple(sorted(s.labels)) for s in f.samples}),
                     sorted(s.labels.get("symbol", "") for s in f.samples))
            for f in families.values()
        })
    assert shapes[1] == shapes[0]
    # The runbook's five, the per-symbol order counter, the info gauge: all there.
    assert {"grinder_router_fill_prob_enforce_enabled", "grinder_router_fill_prob_enforce_allowlist_enabled",
            "grinder_router_fill_prob_blocks", "grinder_router_fill_prob_cb_trips",
            "grinder_router_fill_prob_auto_threshold_bps", "grinder_router_orders", "grinder_sim_info"} <= set(shapes[0])


@pytest.mark.parametrize("enforce", [False, True], ids=["shadow", "canary"])
def test_orders_and_blocks_move_under_the_same_rules(run_both, dirs, enforce):
    """Shadow: orders counted, nothing blocked. Canary (enforce, allowlist SYM1,SYM2): the
    allowlisted symbols blocked below the 2500 bps threshold (about a quarter), SYM3 never."""
    env = {**dirs, **ORDERS, **BENCH_BREAKER, **(CANARY if enforce else {"GRINDER_FILL_MODEL_ENFORCE": "0"})}
    for sim in (sim.started() for sim in run_both(env)):
        first = min(per_symbol(sim.samples(), "grinder_router_orders_total").values())
        got = sim.wait_samples(lambda s: min(per_symbol(s, "grinder_router_orders_total").values()) >= first + 400,
                               "400 more orders per symbol")
        orders, blocks = per_symbol(got, "grinder_router_orders_total"), per_symbol(got, "grinder_router_fill_prob_blocks_total")
        assert blocks["SYM3"] == 0, sim.kind
        for symbol in ("SYM1", "SYM2"):
            if enforce:
                assert 0.15 <= blocks[symbol] / orders[symbol] <= 0.35, (sim.kind, symbol, blocks, orders)
            else:
                assert blocks[symbol] == 0, sim.kind
        assert got[("grinder_router_fill_prob_cb_trips_total", ())] == 0, sim.kind


# --------------------------------------------------------------------------- faults


def test_cb_trip_fault_logs_the_same_line_and_counts(run_both, dirs):
    started = [sim.started() for sim in run_both({**dirs, **CANARY, **ORDERS, **BENCH_BREAKER})]
    trips = []
    for sim in started:
        sim.wait_samples(lambda s: min(per_symbol(s, "grinder_router_orders_total").values()) >= 60, "a full window")
        assert sim.samples()[("grinder_router_fill_prob_cb_trips_total", ())] == 0
        mark = len(sim.lines)
        code, state = sim.post_fault({"cbTrip": True})
        assert code == 200 and state["injectedCbTrips"] == 1 and state["blockAll"] is False, (sim.kind, state)
        line = sim.wait_line("FILL_PROB_CIRCUIT_BREAKER_TRIPPED ", after=mark)
        assert scan_line(line)[1] == line  # the operator's follower takes it as a trip
        trips.append(dict(kv.split("=", 1) for kv in line.split()[1:]))
        assert sim.samples()[("grinder_router_fill_prob_cb_trips_total", ())] == 1
        assert len([x for x in sim.lines if "FILL_PROB_CIRCUIT_BREAKER_TRIPPED" in x]) == 1, sim.lines
    py, lite = trips
    assert list(lite) == list(py) == ["block_count", "rate_pct", "symbol", "source"]
    assert (lite["symbol"], lite["source"]) == (py["symbol"], py["source"]) == ("SYM1", "fault")
    # A second trip on a named symbol counts again in both.
    for sim in started:
        assert sim.post_fault({"cbTrip": True, "symbol": "SYM2"})[0] == 200
        sim.wait_samples(lambda s: s[("grinder_router_fill_prob_cb_trips_total", ())] == 2, "the second trip")


def test_block_all_blocks_every_enforced_order(run_both, dirs):
    """The bench's Prometheus-only no-go: with the breaker unable to trip by block rate, every
    enforced order is blocked from the fault on, the others never; {} clears it."""
    for sim in (sim.started() for sim in run_both({**dirs, **CANARY, **ORDERS, **BENCH_BREAKER})):
        code, state = sim.post_fault({"blockAll": True})
        assert code == 200 and state["blockAll"] is True, (sim.kind, state)
        before = sim.samples()
        after = sim.wait_samples(lambda s: per_symbol(s, "grinder_router_orders_total")["SYM1"]
                                 >= per_symbol(before, "grinder_router_orders_total")["SYM1"] + 200, "200 more orders")
        delta = {name: {sym: per_symbol(after, name)[sym] - per_symbol(before, name)[sym] for sym in ("SYM1", "SYM2", "SYM3")}
                 for name in ("grinder_router_orders_total", "grinder_router_fill_prob_blocks_total")}
        orders, blocks = delta["grinder_router_orders_total"], delta["grinder_router_fill_prob_blocks_total"]
        assert blocks["SYM1"] == orders["SYM1"] and blocks["SYM2"] == orders["SYM2"], (sim.kind, delta)
        assert blocks["SYM3"] == 0, (sim.kind, delta)
        assert after[("grinder_router_fill_prob_cb_trips_total", ())] == 0, sim.kind
        assert not [x for x in sim.lines if "FILL_PROB_CIRCUIT_BREAKER_TRIPPED" in x], sim.lines
        assert sim.post_fault({})[1]["blockAll"] is False
        assert sim.wait_line("GRINDER_SIM_FAULTS_CLEARED")


def test_block_all_trips_the_breaker_by_block_rate_in_both(run_both, dirs):
    """With the default breaker (90 % over 50 orders), blockAll trips it once, as in production."""
    lines = []
    for sim in (sim.started() for sim in run_both({**dirs, **CANARY, **ORDERS})):
        sim.wait_samples(lambda s: min(per_symbol(s, "grinder_router_orders_total").values()) >= 60, "a full window")
        assert sim.post_fault({"blockAll": True})[0] == 200
        line = sim.wait_line("FILL_PROB_CIRCUIT_BREAKER_TRIPPED ")
        lines.append(dict(kv.split("=", 1) for kv in line.split()[1:]))
        sim.wait_samples(lambda s: s[("grinder_router_fill_prob_cb_trips_total", ())] >= 2, "both canary symbols tripped")
        time.sleep(0.5)  # latched: no more trips while every order stays blocked
        assert sim.samples()[("grinder_router_fill_prob_cb_trips_total", ())] == 2, sim.kind
    assert [(d["source"], d["block_count"], d["rate_pct"]) for d in lines] == [("block_rate", "46", "92.0")] * 2


def test_bad_fault_bodies_are_400_in_both(run_both, dirs):
    for sim in (sim.started() for sim in run_both({**dirs, **ORDERS})):
        for body in ({"cbTrip": "yes"}, {"blockAll": 1}, {"cbTrip": True, "symbol": "NOPE"}, {"noSuchFault": True}):
            code, answer = sim.post_fault(body)
            assert code == 400 and answer.get("error"), (sim.kind, body, answer)
        assert sim.samples()[("grinder_router_fill_prob_cb_trips_total", ())] == 0


def test_sigterm_stops_both_cleanly(run_both, dirs):
    for sim in (sim.started() for sim in run_both({**dirs, **ORDERS})):
        assert sim.stop() == 0, sim.kind
        assert sim.lines[-1] == "GRINDER_SIM_STOPPING", (sim.kind, sim.lines)
