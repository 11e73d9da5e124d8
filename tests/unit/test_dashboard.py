"""dashboards/fillprob-rollout.json: every PromQL parses (promtool) and names only metrics that exist.

Known metrics come from their sources: the operator's `operator/fillprob_operator/metrics.py`
(prometheus_client constructors) and the simulator's `sim/grinder/grinder_sim.py`
(`family("name", ...)` in render_metrics). A fallback list covers a missing metrics.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "fillprob-rollout.json"
OPERATOR_METRICS = ROOT / "operator" / "fillprob_operator" / "metrics.py"
SIMULATOR = ROOT / "sim" / "grinder" / "grinder_sim.py"

# API.md "The operator's own metrics", used only while metrics.py does not exist.
OPERATOR_FALLBACK = {
    "fillprob_rollout_info": "gauge",
    "fillprob_rollout_rollbacks_total": "counter",
    "fillprob_rollout_gate_evaluations_total": "counter",
    "fillprob_rollout_detection_seconds": "histogram",
    "fillprob_rollout_prometheus_queries_total": "counter",
    "fillprob_rollout_prometheus_query_seconds": "histogram",
}

# Grafana's built-in interval variables -> a duration; every other $var -> a plain word
# (they only appear inside label-matcher strings).
DURATION_VARS = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}")
OTHER_VARS = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?")

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}


def families_from_sources() -> dict[str, tuple[str, bool]]:
    """name -> (type, exposed by prometheus_client, which adds `_created` series)."""
    families: dict[str, tuple[str, bool]] = {}
    if OPERATOR_METRICS.exists():
        text = OPERATOR_METRICS.read_text(encoding="utf-8")
        for kind, name in re.findall(r"\b(Gauge|Counter|Histogram|Summary|Info|Enum)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"", text):
            families[name] = (kind.lower(), True)
        assert families, f"no metric constructors found in {OPERATOR_METRICS}"
    else:
        families.update({name: (kind, True) for name, kind in OPERATOR_FALLBACK.items()})
    sim = SIMULATOR.read_text(encoding="utf-8")
    found = re.findall(r"family\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\",\s*\"(\w+)\"", sim)
    assert found, f"no family(...) calls found in {SIMULATOR}"
    # The simulator writes its exposition by hand: no `_created` series.
    families.update({name: (kind, False) for name, kind in found})
    return families


def series_names(families: dict[str, tuple[str, bool]]) -> set[str]:
    """What each family exposes as sample names."""
    names: set[str] = set()
    for name, (kind, created) in families.items():
        if kind == "counter":
            base = name[: -len("_total")] if name.endswith("_total") else name
            names.add(base + "_total")
            if created:
                names.add(base + "_created")
        elif kind in ("histogram", "summary"):
            names |= {name + "_sum", name + "_count"}
            if created:
                names.add(name + "_created")
            if kind == "histogram":
                names.add(name + "_bucket")
            else:
                names.add(name)
        elif kind == "info":
            names.add(name + "_info")
        else:
            names.add(name)
    return names


def _walk_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels") or [])


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def expressions(board: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and query variable."""
    out: list[tuple[str, str]] = []
    for panel in _walk_panels(board["panels"]):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for ann in board.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            out.append((f"annotation {ann['name']!r}", ann["expr"]))
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        found = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", query, re.S)
        assert found, f"variable {var['name']}: expected label_values(<selector>, <label>), got {query!r}"
        out.append((f"variable ${var['name']}", found.group(1)))
    return out


def substitute(expr: str) -> str:
    return OTHER_VARS.sub("placeholder", DURATION_VARS.sub("5m", expr))


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small lexer, enough for dashboards)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for found in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = found.group(1), found.group(2)
        if call or word in AGGREGATIONS or word in KEYWORDS:
            continue
        names.add(word)
    return names


def test_metric_lexer() -> None:
    expr = 'sum by (le) (rate(a_bucket{x="b c", y=~"$v"}[5m])) / on(x) group_left(z) max without (q) (b) > bool 0 or vector(0)'
    assert metric_names(expr) == {"a_bucket", "b"}


def test_dashboard_is_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] == "fillprob-rollout" and board["title"]
    names = [v["name"] for v in board["templating"]["list"]]
    assert {"datasource", "namespace", "rollout"} <= set(names)
    ids = [p["id"] for p in _walk_panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _walk_panels(board["panels"]):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_rollout_panels_follow_the_variables() -> None:
    for where, expr in expressions(dashboard()):
        if "fillprob_rollout_info" in expr or "fillprob_rollout_rollbacks_total" in expr:
            if where.startswith("variable"):
                continue
            assert 'namespace=~"$namespace"' in expr and 'name=~"$rollout"' in expr, where
        if "grinder_router_" in expr and not where.startswith("variable"):
            assert 'namespace=~"$namespace"' in expr, where


def test_dashboard_names_only_metrics_that_exist() -> None:
    known = series_names(families_from_sources())
    used: set[str] = set()
    for where, expr in expressions(dashboard()):
        names = metric_names(substitute(expr))
        assert names, f"{where}: no metric found in {expr!r}"
        unknown = names - known
        assert not unknown, f"{where}: unknown metrics {sorted(unknown)} (known: {sorted(known)})"
        used |= names
    # The panels the dashboard promises.
    for wanted in (
        "fillprob_rollout_info",
        "fillprob_rollout_gate_evaluations_total",
        "fillprob_rollout_rollbacks_total",
        "fillprob_rollout_detection_seconds_bucket",
        "fillprob_rollout_prometheus_queries_total",
        "fillprob_rollout_prometheus_query_seconds_bucket",
        "grinder_router_fill_prob_blocks_total",
        "grinder_router_orders_total",
        "grinder_router_fill_prob_cb_trips_total",
    ):
        assert wanted in used, f"dashboard does not show {wanted}"


def find_promtool() -> str:
    """The testbed's promtool (Prometheus 2.55.1, built by `make testbed-build`), else one on PATH."""
    built = Path(__file__).resolve().parents[2] / ".testbed" / "cache" / "bin" / "promtool"
    promtool = str(built) if built.exists() else shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run `make testbed-build` (builds it into .testbed/cache/bin)")
    return promtool


def test_every_promql_parses(tmp_path: Path) -> None:
    promtool = find_promtool()
    exprs = expressions(dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard-fillprob-rollout",
                "rules": [{"record": f"dashboard:check:{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool check rules failed:\n{done.stdout}\n{done.stderr}\n" + "\n".join(
        f"dashboard:check:{i} = {where}" for i, (where, _) in enumerate(exprs)
    )
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout, done.stdout


def test_promtool_catches_a_broken_expression(tmp_path: Path) -> None:
    promtool = find_promtool()
    path = tmp_path / "broken.yml"
    broken = {"groups": [{"name": "g", "rules": [{"record": "x:y", "expr": "sum by (a (rate(x[5m]))"}]}]}
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
