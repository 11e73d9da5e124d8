"""procnode: `$(VAR)` expansion, the cases of Kubernetes' own expansion tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testbed"))

from procnode.expansion import expand, mapping_for  # noqa: E402

CONTEXT = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(VAR_A)", "A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("$(VAR_A)-1", "A-1"),
        ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
        ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
        ("$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
        ("f000-$$VAR_A", "f000-$VAR_A"),
        ("foo\\$(VAR_C)bar", "foo\\Cbar"),
        ("foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
        ("$(VAR_A)$$$(VAR_B)", "A$B"),  # $$ then $(VAR_B)
        ("$(VAR_REF)", "$(VAR_A)"),  # values are not expanded twice
        ("$(VAR_EMPTY)", ""),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$(UNKNOWN)_$(VAR_A)", "$(UNKNOWN)_A"),
        ("$()", "$()"),
        ("$(VAR_A", "$(VAR_A"),  # incomplete reference
        ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),  # name is everything up to the first ')'
        ("$VAR_A", "$VAR_A"),
        ("$", "$"),
        ("$$", "$"),
        ("$$$", "$$"),
        ("$$$$", "$$"),
        ("$(VAR_A)$", "A$"),
        ("", ""),
        ("no refs here", "no refs here"),
        ("$(ünïcode)é", "$(ünïcode)é"),
    ],
)
def test_expand_like_kubernetes(text: str, expected: str) -> None:
    assert expand(text, mapping_for(CONTEXT)) == expected


def test_mapping_looks_contexts_up_in_order() -> None:
    mapping = mapping_for({"A": "first"}, {"A": "second", "B": "fallback"})
    assert expand("$(A) $(B) $(C)", mapping) == "first fallback $(C)"
