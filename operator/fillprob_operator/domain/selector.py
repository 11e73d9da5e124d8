"""PromQL label matchers, as `spec.prometheus.selector` holds them: `a="x",b=~"y.*",c!="z",d!~"w"`.

Parsed once at the edge. The CRD is where a selector is valid or not (its grammar and, with
CEL's RE2 `matches`, its regexes); this parser reads every selector the CRD admits. A shape it
cannot read at all (only a spec that skipped the API server) is a SelectorError. A regex that
RE2 cannot compile is NOT an error here: that matcher matches nothing and says why in
`Matcher.problem` / `Selector.problems` ("no data", never a rejected spec that stops guarding).

`Selector.matches` answers "is this series one of ours" the way Prometheus would: a missing
label is the empty string, regular expressions are RE2 (google-re2, the engine family of Go's
regexp that Prometheus uses), compiled as Prometheus compiles them: `^(?s:<value>)$`.
Quoted values are PromQL double-quoted strings: `\\` `\"` `\n` `\t` ... unescape as in Go
(the CRD admits only those); any other escaped character stands for itself.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import re2

_NAME = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_SEPARATOR = re.compile(r"\s*,\s*")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}
_RENDER = {char: "\\" + letter for letter, char in _ESCAPES.items()}

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad regex is reported in Matcher.problem, not on stderr


@functools.lru_cache(maxsize=1024)
def re2_compile(pattern: str) -> Any:
    """`pattern` compiled with RE2 as Go's regexp reads it; ValueError saying why it cannot.

    google-re2 is RE2's C++ engine; Go's regexp (Prometheus, the API server's CEL) refuses
    the one escape C++ accepts, `\\C` (any byte), so it is refused here too.
    """
    escaped = False
    for char in pattern:
        if escaped and char == "C":
            raise ValueError("invalid escape sequence: \\C")
        escaped = not escaped and char == "\\"
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ValueError(str(detail)) from None


def compile_regex(value: str) -> Any:
    """A matcher's `value` as Prometheus compiles it (`^(?s:<value>)$`); ValueError saying why not."""
    try:
        return re2_compile(f"^(?s:{value})$")
    except ValueError as exc:
        raise ValueError(f"not a valid RE2 regex ({exc})") from None


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
    # Why this matcher can never match (its regex does not compile); "" when it is fine.
    problem: str = field(default="", compare=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.problem:
            return False  # no series is ours: "no data", never a guess
        actual = labels.get(self.label, "")
        if self.op is MatchOp.EQUAL:
            return actual == self.value
        if self.op is MatchOp.NOT_EQUAL:
            return actual != self.value
        hit = compile_regex(self.value).search(actual) is not None
        return hit if self.op is MatchOp.REGEX else not hit

    def render(self) -> str:
        escaped = "".join(_RENDER.get(c, c) for c in self.value)
        return f'{self.label}{self.op.value}"{escaped}"'


@dataclass(frozen=True)
class Selector:
    matchers: tuple[Matcher, ...]

    @property
    def problems(self) -> tuple[str, ...]:
        """Why this selector matches nothing (e.g. a regex RE2 cannot compile); () when fine."""
        return tuple(m.problem for m in self.matchers if m.problem)

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
    """`'job="grinder",pod=~"grinder-.*"'` -> Selector; SelectorError saying what is wrong.

    Never an error for a selector the CRD admits: a regex RE2 cannot compile gives a matcher
    that matches nothing, with its `problem` (see `Selector.problems`).
    """
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
        problem = ""
        if op in (MatchOp.REGEX, MatchOp.NOT_REGEX):
            try:
                compile_regex(value)
            except ValueError as exc:
                problem = f"selector regex invalid: {name.group(1)}{op.value}{string.group(0)}: {exc}; it matches nothing"
        matchers.append(Matcher(name.group(1), op, value, problem))
        position = string.end()
        if not text[position:].strip():
            return Selector(tuple(matchers))
        separator = _SEPARATOR.match(text, position)
        if not separator:
            raise SelectorError(f"selector {text!r}: unexpected {text[position:].strip()!r} after a matcher")
        position = separator.end()
        if not text[position:].strip():
            raise SelectorError(f"selector {text!r}: trailing comma")


# What follows the Deployment's name in its pods' names: `<deployment>-<hash>-<suffix>`.
POD_SUFFIX = "-[a-z0-9]+-[a-z0-9]+"
# RE2's metacharacters (Go's regexp.QuoteMeta escapes the same set).
_META = frozenset("\\.+*?()|[]{}^$")


def quote_meta(text: str) -> str:
    """`text` as an RE2 regex that matches exactly it (Go's `regexp.QuoteMeta`)."""
    return "".join("\\" + c if c in _META else c for c in text)


def deployment_of(pod_regex: str) -> str | None:
    """The Deployment a `pod=~` value names when it has the default selector's shape (a plain
    name, metacharacters escaped, then POD_SUFFIX), else None. Its pods are exactly the names
    `<that>-<a>-<b>` with `a`, `b` of `[a-z0-9]+`: `pod.rsplit("-", 2)[0]` gives it back."""
    if not pod_regex.endswith(POD_SUFFIX):
        return None
    name, escaped = [], False
    for char in pod_regex[: -len(POD_SUFFIX)]:
        if escaped:
            if char.isalnum():
                return None  # \d, \w, \pN ...: a class, not a letter
            name.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in _META:
            return None
        else:
            name.append(char)
    return None if escaped else "".join(name)


def default_selector(namespace: str, deployment_name: str) -> Selector:
    """This Deployment's pods in this namespace (pod names are `<deployment>-<hash>-<suffix>`)."""
    return Selector(
        (
            Matcher("namespace", MatchOp.EQUAL, namespace),
            Matcher("pod", MatchOp.REGEX, quote_meta(deployment_name) + POD_SUFFIX),
        )
    )
