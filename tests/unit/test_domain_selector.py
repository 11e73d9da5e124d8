"""PromQL label matchers (spec.prometheus.selector)."""

from __future__ import annotations

import pytest

from fillprob_operator.domain.selector import (
    MatchOp,
    Matcher,
    SelectorError,
    compile_regex,
    default_selector,
    deployment_of,
    parse_selector,
    quote_meta,
)


def test_parses_all_four_operators() -> None:
    selector = parse_selector('a="x",b=~"y.*",c!="z",d!~"w"')
    assert selector.matchers == (
        Matcher("a", MatchOp.EQUAL, "x"),
        Matcher("b", MatchOp.REGEX, "y.*"),
        Matcher("c", MatchOp.NOT_EQUAL, "z"),
        Matcher("d", MatchOp.NOT_REGEX, "w"),
    )


def test_spaces_and_escapes() -> None:
    selector = parse_selector(' job = "gr\\"in\\\\der" , pod=~"g-\\\\d+" ')
    assert selector.matchers[0].value == 'gr"in\\der'
    assert selector.matchers[1].value == "g-\\d+"


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"a": "x", "b": "yes", "c": "q", "d": "v"}, True),
        ({"a": "x", "b": "yes", "c": "z", "d": "v"}, False),  # c!="z"
        ({"a": "x", "b": "nope", "c": "q", "d": "v"}, False),  # b=~"y.*" is anchored
        ({"a": "x", "b": "y", "d": "w"}, False),  # d!~"w"
        ({"a": "x", "b": "y"}, True),  # missing c and d are "": c!="z" and d!~"w" hold
        ({"b": "y"}, False),  # missing a is "" != "x"
    ],
)
def test_matching_a_label_set(labels: dict, expected: bool) -> None:
    assert parse_selector('a="x",b=~"y.*",c!="z",d!~"w"').matches(labels) is expected


def test_regex_is_fully_anchored() -> None:
    assert not parse_selector('pod=~"grinder"').matches({"pod": "grinder-abc"})
    assert parse_selector('pod=~"grinder.*"').matches({"pod": "grinder-abc"})


@pytest.mark.parametrize(
    "text, hint",
    [
        ("", "expected a label matcher"),
        ("pod=grinder", "double-quoted string"),
        ('pod="a",', "trailing comma"),
        ('pod="a" job="b"', "unexpected"),
        ('{pod="a"}', "expected a label matcher"),
        ('1pod="a"', "expected a label matcher"),
    ],
)
def test_bad_selectors_say_what_is_wrong(text: str, hint: str) -> None:
    with pytest.raises(SelectorError, match=hint):
        parse_selector(text)


@pytest.mark.parametrize(
    "text, bad",
    [
        ('pod=~"grinder-(.*"', 'pod=~"grinder-(.*"'),  # the user's report
        ('job="g",pod!~"[a-"', 'pod!~"[a-"'),
        ('pod=~"x\\\\"', "missing )"),  # regex x\ : in ^(?s:x\)$ the backslash escapes the )
        ('pod=~"a{1001}"', "repetition"),
        ('pod=~"a\\\\C"', "\\C"),  # C++ RE2 accepts \C (any byte); Go's regexp, as Prometheus, does not
    ],
)
def test_an_invalid_regex_parses_into_a_matcher_that_matches_nothing(text: str, bad: str) -> None:
    """API.md: a spec the API server accepts is a spec the operator reads. A regex RE2 cannot
    compile is "no data" (the lead reports it), never a parse error that stops guarding."""
    selector = parse_selector(text)
    (problem,) = selector.problems
    assert problem.startswith("selector regex invalid") and bad in problem
    assert not selector.matches({"job": "g", "pod": "grinder-abc"})
    assert not selector.matches({})


def test_regexes_are_re2_compiled_like_prometheus() -> None:
    # ^(?s:<value>)$: `.` matches a newline, and `a)(b` is a valid Prometheus regex.
    assert parse_selector('m=~"a.b"').matches({"m": "a\nb"})
    assert parse_selector('m=~"a)(b"').matches({"m": "ab"}) and not parse_selector('m=~"a)(b"').problems
    # RE2 has no backreferences or lookarounds (Python's re would accept these).
    assert parse_selector('m=~"(a)\\\\1"').problems
    assert parse_selector('m=~"(?=a)"').problems
    # RE2-only syntax parses.
    assert parse_selector('m=~"\\\\pL+"').matches({"m": "abc"})


def test_go_string_escapes() -> None:
    selector = parse_selector('a="x\\ty\\nz",b=~"\\\\d+"')
    assert selector.matchers[0].value == "x\ty\nz"
    assert selector.matchers[1].value == "\\d+"
    assert parse_selector(selector.render()) == selector


def test_render_round_trips() -> None:
    text = 'job="grinder",pod=~"grinder-[a-z0-9]+",x!="a\\"b"'
    assert parse_selector(parse_selector(text).render()) == parse_selector(text)


def test_default_selector_is_this_deployments_pods_in_this_namespace() -> None:
    selector = default_selector("trading", "grinder")
    assert selector.matches({"namespace": "trading", "pod": "grinder-5d8f7c9b6d-x2x7q"})
    assert not selector.matches({"namespace": "other", "pod": "grinder-5d8f7c9b6d-x2x7q"})
    assert not selector.matches({"namespace": "trading", "pod": "grinder-preflight-1-abcde-x"})
    assert not selector.matches({"namespace": "trading", "pod": "grinderx-5d8f7c9b6d-x2x7q"})


@pytest.mark.parametrize("text", ["grinder", "a.b", "x+y*z?", "(a|b)", "[c]{2}", "^$", "back\\slash", "é-ü", ""])
def test_quote_meta_matches_exactly_the_text(text: str) -> None:
    regex = compile_regex(quote_meta(text))
    assert regex.search(text) is not None
    assert regex.search(text + "x") is None and regex.search("x" + text) is None


@pytest.mark.parametrize(
    "value, deployment",
    [
        ("grinder-[a-z0-9]+-[a-z0-9]+", "grinder"),
        ("grinder\\.x-[a-z0-9]+-[a-z0-9]+", "grinder.x"),
        ("grinder-x-[a-z0-9]+-[a-z0-9]+", "grinder-x"),
        ("grinder.x-[a-z0-9]+-[a-z0-9]+", None),  # `.` is any character: not one Deployment
        ("grinder\\d-[a-z0-9]+-[a-z0-9]+", None),
        ("(a|b)-[a-z0-9]+-[a-z0-9]+", None),
        ("grinder-.*", None),
        ("grinder\\", None),
    ],
)
def test_deployment_of_reads_the_default_selector_s_shape(value: str, deployment: str | None) -> None:
    assert deployment_of(value) == deployment


def test_the_default_selector_is_read_back_as_its_deployment() -> None:
    pod = default_selector("ns", "grinder.x").matchers[1]
    assert deployment_of(pod.value) == "grinder.x"
    assert pod.matches({"pod": "grinder.x-5d9c7b-abcde"}) and not pod.matches({"pod": "grinderxx-5d9c7b-abcde"})
