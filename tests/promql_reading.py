"""Reads the gate queries back as Prometheus would, for the fakes: `metric{a="x"} or metric{b=~"y"}`
-> ("metric", the arms as Selectors), parsed by the real `domain.selector` parser. A series is in
the answer when any arm matches it (PromQL `or`)."""

from __future__ import annotations

from typing import Mapping

from fillprob_operator.domain.selector import Selector, parse_selector


def _unquoted(text: str):
    """(position, character) of each character outside PromQL double-quoted strings."""
    quoted, escaped = False, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted:
            yield i, char


def _split(query: str) -> list[str]:
    """The arms of a top-level `or` (never inside quotes or brackets)."""
    arms, depth, start = [], 0, 0
    for i, char in _unquoted(query):
        if char in "{([":
            depth += 1
        elif char in "})]":
            depth -= 1
        elif depth == 0 and query.startswith(" or ", i):
            arms.append(query[start:i])
            start = i + 4
    arms.append(query[start:])
    return arms


def _unscope(arm: str) -> tuple[str, Selector]:
    """`increase(m{a="x"}[1m])` -> ("increase(m[1m])", the selector in the braces)."""
    opening = arm.find("{")
    if opening < 0:
        return arm, Selector(())
    closing = next(i for i, char in _unquoted(arm) if char == "}")
    inner = arm[opening + 1:closing]
    return arm[:opening] + arm[closing + 1:], parse_selector(inner) if inner.strip() else Selector(())


def read_query(query: str) -> tuple[str, tuple[Selector, ...]]:
    read = [_unscope(arm) for arm in _split(query)]
    bases = {base for base, _ in read}
    assert len(bases) == 1, f"arms of different queries in {query!r}"
    return bases.pop(), tuple(selector for _, selector in read)


def in_answer(arms: tuple[Selector, ...], labels: Mapping[str, str]) -> bool:
    return any(arm.matches(labels) for arm in arms)
