-- Argo CD resource action `rollback-r3` for grinder.io/FillProbRollout:
-- ask the operator to apply playbook R3 now.
-- What `kubectl fillprob rollback NAME R3 --reason ...` does (operator/fillprob_operator/cli.py).
-- Argo CD runs it in gopher-lua (base, table and package libraries only), then merge-patches
-- the live object with the difference. It returns the whole object: the form every Argo CD
-- version accepts.
-- The operator applies the playbook if it narrows the current env (else RollbackSkipped),
-- removes the annotation and records who (the annotation's field manager) and why in history.
obj.metadata = obj.metadata or {}
obj.metadata.annotations = obj.metadata.annotations or {}
obj.metadata.annotations["grinder.io/rollback"] = "R3"
obj.metadata.annotations["grinder.io/rollback-reason"] = "Argo CD resource action rollback-r3"
return obj
