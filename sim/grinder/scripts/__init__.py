"""Operator scripts shipped with the grinder simulator (runbook 32 Phase 0)."""
