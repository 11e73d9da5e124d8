"""Hypothesis strategies for PromQL selectors and the label sets of series, shared by the
scope and split property tests: values and regexes chosen so that they often match, and
include what is awkward (escapes, flags, a regex that is not whole on its own, one RE2
cannot compile, `__name__`)."""

from __future__ import annotations

from hypothesis import strategies as st

from fillprob_operator.domain.selector import (
    MatchOp,
    Matcher,
    Selector,
    compile_regex,
    default_selector,
    quote_meta,
)

LABELS = ("namespace", "pod", "job", "__name__", "x")
VALUES = ("", "a", "b", "ns1", "ns-2", "ns.3", "grinder", "grinder-abc-d1", "grinder.x-1a-2b",
          "grinder-x-1a-2b", "g-1-2", "G-1-2", "up", "a|b", "x\ny", 'q"t', "a\\b")
REGEXES = ("", ".*", ".+", "a|b", "ns.*", "NS1", "(?i)NS1", "grinder-[a-z0-9]+-[a-z0-9]+",
           "grinder\\.x-[a-z0-9]+-[a-z0-9]+", "grinder-x-[a-z0-9]+-[a-z0-9]+", "[a-z0-9]+-[a-z0-9]+-[a-z0-9]+",
           "g.*-2", "ns1|ns-2", "a)|(b", "(", "\\d", "\\d-\\d", "(a|b)", "x.y", "[^a]*")


def build(matchers) -> Selector:
    """As the parser would build it: a regex RE2 cannot compile has its `problem`."""
    built = []
    for label, op, value in matchers:
        problem = ""
        if op in (MatchOp.REGEX, MatchOp.NOT_REGEX):
            try:
                compile_regex(value)
            except ValueError as exc:
                problem = str(exc)
        built.append(Matcher(label, op, value, problem))
    return Selector(tuple(built))


def selectors_of(values: st.SearchStrategy[str]) -> st.SearchStrategy[Selector]:
    """Selectors with these values (and their quoted forms as regexes), or default selectors."""
    matcher = st.one_of(
        st.tuples(st.sampled_from(LABELS), st.sampled_from([MatchOp.EQUAL, MatchOp.NOT_EQUAL]), values),
        st.tuples(st.sampled_from(LABELS), st.sampled_from([MatchOp.REGEX, MatchOp.NOT_REGEX]),
                  st.one_of(st.sampled_from(REGEXES), values.map(quote_meta))),
    )
    return st.one_of(
        st.lists(matcher, min_size=1, max_size=4).map(build),
        st.tuples(values, values).map(lambda nd: default_selector(*nd)),
    )


values = st.sampled_from(VALUES)
selectors = selectors_of(values)
label_sets = st.dictionaries(st.sampled_from(LABELS), values, max_size=len(LABELS))
