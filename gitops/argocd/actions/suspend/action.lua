-- Argo CD resource action `suspend` for grinder.io/FillProbRollout:
-- set spec.suspend=true: the operator changes nothing, keeps reporting.
-- What `kubectl fillprob suspend` does (operator/fillprob_operator/cli.py).
-- Argo CD runs it in gopher-lua (base, table and package libraries only), then merge-patches
-- the live object with the difference. It returns the whole object: the form every Argo CD
-- version accepts.
obj.spec = obj.spec or {}
obj.spec.suspend = true
return obj
