-- Argo CD resource action `resume` for grinder.io/FillProbRollout:
-- set spec.suspend=false: the operator carries on from status.
-- What `kubectl fillprob resume` does (operator/fillprob_operator/cli.py).
-- Argo CD runs it in gopher-lua (base, table and package libraries only), then merge-patches
-- the live object with the difference. It returns the whole object: the form every Argo CD
-- version accepts.
obj.spec = obj.spec or {}
obj.spec.suspend = false
-- Like the plugin's resume: the reason a person gave for suspending no longer holds.
if obj.metadata ~= nil and obj.metadata.annotations ~= nil then
  obj.metadata.annotations["grinder.io/suspend-reason"] = nil
end
return obj
