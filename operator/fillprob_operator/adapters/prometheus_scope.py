"""Where the gate queries look: the union of the selectors of the rollouts using one Prometheus.

One query per gate metric per Prometheus per interval serves every rollout that uses it, so its
scope must hold every series that any of their selectors matches: a series left out reads as
"no data" for its rollout (safe, but wrong). A PromQL vector selector is one set of matchers,
ANDed; a union of selectors is, in general, not one. A scope is therefore one or more *arms*,
each a matcher set, joined by PromQL `or` in the one query:
`timestamp(up{<arm 1>}) or timestamp(up{<arm 2>})`.

- The selectors that pin a namespace (`namespace="x"` or `=~`, as the default selector does)
  are merged into ONE arm: for each label that every one of them constrains positively (`=`
  or `=~`), `label=~"<their values, alternated>"`; a label any of them leaves open stays open,
  negative matchers are left out. Each selector implies each matcher of that arm, so the arm
  holds a superset of each selector's series; the split then takes each rollout's own exactly.
- A selector that pins no namespace cannot be narrowed by namespace. Up to MAX_OPEN_ARMS of
  them are arms of their own, verbatim (exact); more are merged like the others, on the labels
  they all share (if none, that arm is the whole metric: no narrowing for that Prometheus).
- Bounded: a scope longer than MAX_SCOPE_CHARS becomes one merged arm whose longest matchers are
  dropped until it fits (each drop widens, never narrows).
- Never in a scope (each would be a query error, or a wrong union, for every rollout on that
  URL; leaving a matcher out only widens the answer): a `__name__` matcher (the query names the
  metric), the matchers of a selector with a regex RE2 cannot compile (it matches nothing, see
  domain.selector), and a regex that is not a whole regex on its own, such as `a)|(b`: the CRD
  admits it (`^(?s:a)|(b)$` compiles, unanchored), Prometheus refuses it in a query ("error
  parsing regexp: unexpected )", Prometheus 2.55), and in a union it would change meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from ..domain.selector import (
    POD_SUFFIX,
    MatchOp,
    Matcher,
    Selector,
    compile_regex,
    deployment_of,
    quote_meta,
    re2_compile,
)

NAMESPACE = "namespace"
METRIC_NAME = "__name__"
MAX_OPEN_ARMS = 4
# The query travels in the URL (prometheus_api_client sends it as a URL parameter, GET or
# POST), URL-encoding lengthens it, and proxies in front of Prometheus commonly refuse request
# lines over 8 KiB (nginx's large_client_header_buffers): 4096 characters of matchers leave
# room. 300 default selectors with names like `grinder-123` in 30 namespaces take about 3.5k.
MAX_SCOPE_CHARS = 4096


@dataclass(frozen=True)
class Scope:
    """The arms of one query; an arm without matchers is the whole metric; no arms: no
    selector to serve, nothing to ask."""

    arms: tuple[Selector, ...]

    def query(self, template: str, **fields: str) -> str:
        """`template` (its `{scope}` where the braces go) once per arm, joined by `or`."""
        return " or ".join(
            template.format(scope="{" + arm.render() + "}" if arm.matchers else "", **fields)
            for arm in self.arms
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(arm.matches(labels) for arm in self.arms)


def query_scope(selectors: Iterable[Selector], budget: int = MAX_SCOPE_CHARS) -> Scope:
    live = sorted({s for s in selectors if not s.problems}, key=Selector.render)
    if not live:
        return Scope(())
    pinned = [s for s in live if _alternative(s, NAMESPACE) is not None]
    open_ = [s for s in live if _alternative(s, NAMESPACE) is None]
    arms = [_merge(pinned)] if pinned else []
    if len(open_) <= MAX_OPEN_ARMS:
        arms += [Selector(tuple(m for m in s.matchers if _sendable(m))) for s in open_]
    else:
        arms.append(_merge(open_))
    if sum(len(arm.render()) for arm in arms) > budget:
        arms = [_fit(_merge(live), budget)]
    if any(not arm.matchers for arm in arms):
        return Scope((Selector(()),))  # one arm holds everything: the others add nothing
    return Scope(tuple(dict.fromkeys(arms)))


def _alternative(selector: Selector, label: str) -> tuple[MatchOp, str] | None:
    """The first positive matcher of `selector` on `label` that can stand in a union."""
    for matcher in selector.matchers:
        if matcher.label != label or matcher.problem:
            continue
        if matcher.op is MatchOp.EQUAL:
            return matcher.op, matcher.value
        if matcher.op is MatchOp.REGEX and _whole(matcher.value):
            return matcher.op, matcher.value
    return None


def _sendable(matcher: Matcher) -> bool:
    """The matcher may stand in a query as it is (see the module)."""
    if matcher.label == METRIC_NAME:
        return False
    return matcher.op in (MatchOp.EQUAL, MatchOp.NOT_EQUAL) or _whole(matcher.value)


def _whole(regex: str) -> bool:
    """`regex` compiles on its own: `(?:<it>)` then reads as Prometheus reads `^(?s:<it>)$`."""
    try:
        re2_compile(regex)
    except ValueError:
        return False
    return True


def _merge(group: list[Selector]) -> Selector:
    """One matcher set that every selector of `group` implies (see the module)."""
    shared = set.intersection(*({m.label for m in s.matchers} for s in group)) - {METRIC_NAME}
    matchers = []
    for label in sorted(shared):
        alternatives = [_alternative(s, label) for s in group]
        if all(a is not None for a in alternatives):
            union = _union(label, alternatives)  # type: ignore[arg-type]
            if union is not None:
                matchers.append(union)
    return Selector(tuple(matchers))


def _union(label: str, alternatives: list[tuple[MatchOp, str]]) -> Matcher | None:
    values = {value for op, value in alternatives if op is MatchOp.EQUAL}
    regexes = {value for op, value in alternatives if op is MatchOp.REGEX}
    if not regexes and len(values) == 1:
        return Matcher(label, MatchOp.EQUAL, values.pop())
    # The default selector's `pod=~"<deployment>-[a-z0-9]+-[a-z0-9]+"`, factored:
    # `(?:a|b)-[a-z0-9]+-[a-z0-9]+` is `a-...|b-...` when a and b are plain names.
    deployments = {d for d in map(deployment_of, regexes) if d is not None}
    regexes = {r for r in regexes if deployment_of(r) is None}
    pieces = sorted(quote_meta(v) for v in values) + sorted(f"(?:{r})" for r in regexes)
    if deployments:
        names = sorted(quote_meta(d) for d in deployments)
        pieces.append((names[0] if len(names) == 1 else "(?:" + "|".join(names) + ")") + POD_SUFFIX)
    union = "|".join(pieces)
    try:
        compile_regex(union)
    except ValueError:
        return None  # cannot happen with whole regexes; left open rather than a broken query
    return Matcher(label, MatchOp.REGEX, union)


def _fit(arm: Selector, budget: int) -> Selector:
    matchers = list(arm.matchers)
    while matchers and len(Selector(tuple(matchers)).render()) > budget:
        matchers.remove(max(matchers, key=lambda m: len(m.render())))
    return Selector(tuple(matchers))
