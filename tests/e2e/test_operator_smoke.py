"""Smoke: the operator takes a grinder Deployment over and walks Preflight -> Shadow."""

import pytest

pytestmark = pytest.mark.e2e


def test_walks_preflight_to_shadow_passed(grinder_env):
    env = grinder_env
    env.apply_grinder()
    env.wait_grinder_available()
    env.apply_rollout(targetPhase="Shadow", observation={"shadow": "5s"})
    st = env.wait_state("Passed", "Shadow", timeout=120)
    assert st["phase"] == "Shadow"
    assert env.managed_env()["GRINDER_FILL_MODEL_ENFORCE"] == "0"
    assert "GRINDER_FILL_PROB_ENFORCE_SYMBOLS" not in env.managed_env()
    assert st["threshold"]["mode"] == "recommend_only"
