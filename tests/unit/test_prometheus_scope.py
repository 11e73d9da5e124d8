"""The scope of the shared gate queries: every series any registered selector matches is in
the answer (a series left out would read as "no data" for its rollout), and the query stays
bounded and valid PromQL. Checked by reading the rendered query back as Prometheus would
(`promql_reading`: the real selector parser, RE2 matching)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st
from promql_reading import in_answer, read_query
from selector_strategies import label_sets, selectors
from test_dashboard import find_promtool

from fillprob_operator.adapters.prometheus import gate_queries
from fillprob_operator.adapters.prometheus_scope import MAX_OPEN_ARMS, MAX_SCOPE_CHARS, query_scope
from fillprob_operator.domain.selector import MatchOp, Selector, default_selector, parse_selector, re2_compile


def read_back(scope) -> tuple[Selector, ...]:
    query = gate_queries("1m", scope)["scraped_at"]
    base, arms = read_query(query)
    assert base == "timestamp(up)"
    return arms


@settings(max_examples=400)
@given(st.lists(selectors, min_size=1, max_size=MAX_OPEN_ARMS + 4),
       st.lists(label_sets, min_size=1, max_size=8),
       st.sampled_from([MAX_SCOPE_CHARS, 80, 20, 0]))
def test_every_series_a_selector_matches_is_in_the_answer(chosen, series, budget):
    scope = query_scope(chosen, budget)
    arms = read_back(scope) if scope.arms else ()
    for arm in arms:
        assert not arm.problems, arm.problems  # every regex compiles as Prometheus compiles it
        assert all(m.label != "__name__" for m in arm.matchers)
        for m in arm.matchers:  # and on its own, as Prometheus' parser checks it
            if m.op in (MatchOp.REGEX, MatchOp.NOT_REGEX):
                re2_compile(m.value)
    for labels in series:
        if any(s.matches(labels) for s in chosen):
            event("a selector matches a series")
            assert in_answer(arms, labels), (labels, scope)
    if len(scope.arms) > 1:  # several arms only when they fit
        assert sum(len(arm.render()) for arm in scope.arms) <= budget


def test_default_selectors_merge_into_one_arm_by_namespace_and_deployment():
    chosen = [default_selector(f"ns{i % 3}", f"grinder-{i}") for i in range(6)] + [default_selector("ns0", "a.b")]
    (arm,) = read_back(query_scope(chosen))
    assert arm.render() == (
        'namespace=~"ns0|ns1|ns2",'
        'pod=~"(?:a\\\\.b|grinder-0|grinder-1|grinder-2|grinder-3|grinder-4|grinder-5)-[a-z0-9]+-[a-z0-9]+"'
    )


def test_one_selector_is_asked_for_as_it_is():
    scope = query_scope([default_selector("ns", "grinder")])
    assert gate_queries("1m", scope)["scraped_at"] == 'timestamp(up{namespace="ns",pod=~"grinder-[a-z0-9]+-[a-z0-9]+"})'


def test_three_hundred_rollouts_in_thirty_namespaces_keep_both_matchers():
    chosen = [default_selector(f"team-{i % 30}", f"grinder-{i}") for i in range(300)]
    (arm,) = query_scope(chosen).arms
    assert [m.label for m in arm.matchers] == ["namespace", "pod"]
    assert len(arm.render()) <= MAX_SCOPE_CHARS


def test_too_long_for_the_budget_drops_the_longest_matcher_first():
    chosen = [default_selector(f"team-{i % 30}", f"a-rather-long-deployment-name-{i}") for i in range(300)]
    (arm,) = query_scope(chosen).arms
    assert [m.label for m in arm.matchers] == ["namespace"]  # the whole namespaces: wider, never narrower


def test_a_selector_without_namespace_is_an_arm_of_its_own():
    chosen = [default_selector("ns", "grinder"), parse_selector('job="grinder",pod!="x"')]
    query = gate_queries("1m", query_scope(chosen))["enforce_enabled"]
    assert query == ('grinder_router_fill_prob_enforce_enabled{namespace="ns",pod=~"grinder-[a-z0-9]+-[a-z0-9]+"} or '
                     'grinder_router_fill_prob_enforce_enabled{job="grinder",pod!="x"}')


def test_many_selectors_without_namespace_merge_on_what_they_share():
    chosen = [parse_selector(f'job="j{i}",pod=~"p{i}-.*"') for i in range(MAX_OPEN_ARMS + 1)]
    (arm,) = query_scope(chosen).arms
    assert [m.label for m in arm.matchers] == ["job", "pod"]
    assert arm.matchers[0].value == "j0|j1|j2|j3|j4"


def test_selectors_that_share_nothing_leave_the_metric_whole():
    chosen = [parse_selector(f'l{i}="v"') for i in range(MAX_OPEN_ARMS + 1)]
    assert gate_queries("1m", query_scope(chosen))["scraped_at"] == "timestamp(up)"


@pytest.mark.parametrize("text", ['__name__="up",namespace="ns"', 'namespace="ns",pod=~"a)|(b"'])
def test_what_cannot_stand_in_a_union_leaves_the_label_open(text):
    # a second metric name is a query error for every rollout; `a)|(b` is unanchored in Prometheus
    (arm,) = query_scope([parse_selector(text), default_selector("ns", "g")]).arms
    assert arm.render() == 'namespace="ns"'


def test_a_regex_prometheus_refuses_never_reaches_a_query():
    (arm,) = query_scope([parse_selector('namespace=~"a)|(b",pod=~"(?i)G.*",job!~"a)|(b"')]).arms
    assert arm.render() == 'pod=~"(?i)G.*"'


def test_prometheus_parses_every_gate_query(tmp_path: Path):
    """The real consumer: Prometheus' own parser (promtool check rules) reads the queries."""
    cases = [
        [default_selector("ns", "grinder")],
        [default_selector(f"team-{i % 30}", f"grinder-{i}") for i in range(300)],
        [default_selector("ns", "a.b"), parse_selector('job="grinder",pod!="x"'),
         parse_selector('namespace=~"a)|(b",pod=~"(?i)G.*"'), parse_selector('x!~"a)|(b",__name__="up"')],
        [parse_selector(f'job="j{i}",pod=~"p{i}-.*\\\\d"') for i in range(MAX_OPEN_ARMS + 2)],
        [parse_selector('namespace="we\\"ird\\\\ns",pod=~"x\\ny|[a-z]{2}"'), default_selector("ns", "g")],
        [parse_selector(f'l{i}="v"') for i in range(MAX_OPEN_ARMS + 2)],
    ]
    rules = [{"record": f"check:{key}:{n}", "expr": query}
             for n, chosen in enumerate(cases) for key, query in gate_queries("1m", query_scope(chosen)).items()]
    path = tmp_path / "gate-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "gate-queries", "rules": rules}]}), encoding="utf-8")
    done = subprocess.run([find_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in done.stdout, done.stdout + done.stderr


def test_a_selector_that_matches_nothing_asks_for_nothing():
    broken = parse_selector('namespace="ns",pod=~"("')
    assert query_scope([broken]).arms == ()
    assert gate_queries("1m", query_scope([broken])) == {}
    (arm,) = query_scope([broken, default_selector("ns", "g")]).arms
    assert arm == default_selector("ns", "g")
