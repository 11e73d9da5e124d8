"""`$(VAR)` expansion exactly as Kubernetes does it (third_party/forked/golang/expansion).

`$(NAME)` is replaced by NAME's value when NAME is known, and left as written when it is not;
`$$` is an escaped `$`; any other `$x` is copied unchanged. Used for env values, command and args.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

Mapping_ = Callable[[str], str]


def mapping_for(*contexts: Mapping[str, str]) -> Mapping_:
    """Look NAME up in each context in turn; unknown names stay `$(NAME)`."""

    def mapping(name: str) -> str:
        for ctx in contexts:
            if name in ctx:
                return ctx[name]
        return f"$({name})"

    return mapping


def _read_variable(rest: str) -> tuple[str, bool, int]:
    """What follows a `$`: (text, is_variable_name, characters consumed)."""
    first = rest[0]
    if first == "$":  # escaped operator
        return "$", False, 1
    if first == "(":
        close = rest.find(")", 1)
        if close != -1:
            return rest[1:close], True, close + 1
        return "$(", False, 1  # incomplete reference: copied as is
    return "$" + first, False, 1


def expand(text: str, mapping: Mapping_) -> str:
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            read, is_var, advance = _read_variable(text[cursor + 1 :])
            out.append(mapping(read) if is_var else read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]
