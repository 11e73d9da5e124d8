"""PromQL label matchers, as `spec.prometheus.selector` holds them: `a="x",b=~"y.*",c!="z",d!~"w"`.

Parsed once at the edge (a bad selector is a spec error with a message saying what to fix);
`Selector.matches` answers "is this series one of ours" the way Prometheus would: a missing
label is the empty string, regular expressions are fully anchored.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Mapping

_NAME = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_SEPARATOR = re.compile(r"\s*,\s*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}


class MatchOp(str, enum.Enum):
    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


@dataclass(frozen=True)
class Matcher:
    label: str
    op: MatchOp
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op is MatchOp.EQUAL:
            return actual == self.value
        if self.op is MatchOp.NOT_EQUAL:
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op is MatchOp.REGEX else not hit

    def render(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.label}{self.op.value}"{escaped}"'


@dataclass(frozen=True)
class Selector:
    matchers: tuple[Matcher, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def render(self) -> str:
        """Matchers without braces, ready to splice into `metric{<here>}`."""
        return ",".join(m.render() for m in self.matchers)


class SelectorError(ValueError):
    pass


def _unescape(raw: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), raw)


def parse_selector(text: str) -> Selector:
    """`'job="grinder",pod=~"grinder-.*"'` -> Selector; SelectorError saying what is wrong."""
    matchers: list[Matcher] = []
    position = 0
    while True:
        name = _NAME.match(text, position)
        if not name:
            raise SelectorError(
                f"selector {text!r}: expected a label matcher such as job=\"grinder\" at character {position}"
            )
        string = _STRING.match(text, name.end())
        if not string:
            raise SelectorError(
                f"selector {text!r}: the value of {name.group(1)} must be a double-quoted string"
            )
        op = MatchOp(name.group(2))
        value = _unescape(string.group(1))
        if op in (MatchOp.REGEX, MatchOp.NOT_REGEX):
            try:
                re.compile(value)
            except re.error as exc:
                raise SelectorError(
                    f"selector {text!r}: {name.group(1)}{op.value} is not a valid regex: {exc}"
                ) from None
        matchers.append(Matcher(name.group(1), op, value))
        position = string.end()
        if not text[position:].strip():
            return Selector(tuple(matchers))
        separator = _SEPARATOR.match(text, position)
        if not separator:
            raise SelectorError(f"selector {text!r}: unexpected {text[position:].strip()!r} after a matcher")
        position = separator.end()
        if not text[position:].strip():
            raise SelectorError(f"selector {text!r}: trailing comma")


def default_selector(namespace: str, deployment_name: str) -> Selector:
    """This Deployment's pods in this namespace (pod names are `<deployment>-<hash>-<suffix>`)."""
    return Selector(
        (
            Matcher("namespace", MatchOp.EQUAL, namespace),
            Matcher("pod", MatchOp.REGEX, deployment_name.replace(".", "\\.") + "-[a-z0-9]+-[a-z0-9]+"),
        )
    )
