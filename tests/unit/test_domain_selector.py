"""PromQL label matchers (spec.prometheus.selector)."""

from __future__ import annotations

import pytest

from fillprob_operator.domain.selector import (
    MatchOp,
    Matcher,
    SelectorError,
    default_selector,
    parse_selector,
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
        ('pod=~"("', "not a valid regex"),
        ('1pod="a"', "expected a label matcher"),
    ],
)
def test_bad_selectors_say_what_is_wrong(text: str, hint: str) -> None:
    with pytest.raises(SelectorError, match=hint):
        parse_selector(text)


def test_render_round_trips() -> None:
    text = 'job="grinder",pod=~"grinder-[a-z0-9]+",x!="a\\"b"'
    assert parse_selector(parse_selector(text).render()) == parse_selector(text)


def test_default_selector_is_this_deployments_pods_in_this_namespace() -> None:
    selector = default_selector("trading", "grinder")
    assert selector.matches({"namespace": "trading", "pod": "grinder-5d8f7c9b6d-x2x7q"})
    assert not selector.matches({"namespace": "other", "pod": "grinder-5d8f7c9b6d-x2x7q"})
    assert not selector.matches({"namespace": "trading", "pod": "grinder-preflight-1-abcde-x"})
    assert not selector.matches({"namespace": "trading", "pod": "grinderx-5d8f7c9b6d-x2x7q"})
