"""Enforcement scope (API.md, Everyday change): what the managed env enforces, and "narrower".

Scope is the set of enforced symbols (none with ENFORCE != 1; every symbol with ENFORCE=1 and
an empty or unset ENFORCE_SYMBOLS) plus whether AUTO_THRESHOLD applies thresholds to them.
Narrower means less enforcement: ENFORCE 1 -> 0, fewer enforced symbols, AUTO_THRESHOLD 1 -> 0.
With ENFORCE != 1 nothing is blocked, so AUTO_THRESHOLD changes nothing enforced (R1 leaves it
as it was: "nothing else changed").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..api import AppliedEnv
from .ladder import applied_env_from, parse_symbols

ALL = None  # every symbol


@dataclass(frozen=True)
class Scope:
    symbols: frozenset[str] | None  # None = every symbol
    auto_threshold: bool

    def within(self, other: "Scope") -> bool:
        """Narrower than or equal to `other`."""
        if self.auto_threshold and not other.auto_threshold:
            return False
        if self.symbols is ALL:
            return other.symbols is ALL
        return other.symbols is ALL or self.symbols <= other.symbols

    def describe(self) -> str:
        what = "every symbol" if self.symbols is ALL else (", ".join(sorted(self.symbols)) or "nothing")
        return f"enforcing {what}" + (" with auto-applied thresholds" if self.auto_threshold else "")


def scope_of(env: AppliedEnv | Mapping[str, str | None]) -> Scope:
    if not isinstance(env, AppliedEnv):
        env = applied_env_from(env)
    if env.enforce != "1":
        return Scope(frozenset(), False)
    auto = env.auto_threshold == "1"
    symbols = parse_symbols(env.enforce_symbols)
    return Scope(frozenset(symbols) if symbols else ALL, auto)


def within(a: AppliedEnv, b: AppliedEnv) -> bool:
    """`a` enforces no more than `b`."""
    return scope_of(a).within(scope_of(b))


def narrower(a: AppliedEnv, b: AppliedEnv) -> bool:
    """`a` enforces strictly less than `b`."""
    return within(a, b) and not within(b, a)
