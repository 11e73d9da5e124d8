"""Hypothesis profiles for the model-based tests (tests/unit/test_invariants.py).

"ci" (the default): thorough, every state machine runs at least 2000 examples. Each example
is a start (with up to 14 healthy ticks up the ladder) plus up to 12 random steps; ~3 min on
one core when every promise holds (a failure adds shrinking time). Derandomized: the same
code explores the same histories, so a red CI is a change's doing, not the dice's.
"explore": random seeds and more examples, to find new counterexamples (each one found
becomes a named test in tests/unit/test_invariant_regressions.py):
HYPOTHESIS_PROFILE=explore pytest tests/unit/test_invariants.py
"dev": quick, for a local loop: HYPOTHESIS_PROFILE=dev pytest tests/unit/test_invariants.py
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)

settings.register_profile("ci", max_examples=2000, stateful_step_count=12, derandomize=True, **_COMMON)
settings.register_profile("explore", max_examples=10000, stateful_step_count=16, **_COMMON)
settings.register_profile("dev", max_examples=200, stateful_step_count=12, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
