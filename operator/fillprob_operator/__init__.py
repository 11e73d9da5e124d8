"""FillProbRollout operator: runbook 32 as a Kubernetes controller."""
