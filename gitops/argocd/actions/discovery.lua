-- Argo CD resource actions for grinder.io/FillProbRollout: which ones apply now.
-- Rendered into argocd-cm (resource.customizations.actions.grinder.io_FillProbRollout) by
-- gitops/argocd/render.py. Argo CD runs it in gopher-lua with only the base, table and package
-- libraries: no string.*, math.*, os.* here. Tested by gitops/argocd/luatest (go test).
--
-- Every action is listed; one that does not apply now has disabled = true (greyed out in the
-- UI). The operator stays the authority: a rollback it finds would not narrow the env is
-- recorded as RollbackSkipped and changes nothing, whoever asked.
--   suspend      spec.suspend is not true
--   resume       spec.suspend is true
--   rollback-*   never while spec.suspend is true (the operator takes rollback requests only
--                when not suspended), nor while a grinder.io/rollback annotation is pending;
--                then, from the env the operator applied (status.appliedEnv; a status without
--                it: from status.phase, Canary/Expand/Full/AutoThreshold enforce):
--   rollback-r1  enforcement is on (appliedEnv.enforce "1"): R1 sets ENFORCE=0
--   rollback-r2  enforcement is on and a narrower allowlist exists: lastKnownGoodSymbols (as far
--                as the spec still lists them), a lower rung's allowlist (canarySymbols, canary +
--                expandBatches 1..k) or safeSymbols, non-empty and strictly inside the enforced
--                set (status.enforcedSymbols, else the rung's allowlist; every symbol when
--                ENFORCE_SYMBOLS is empty: Full, AutoThreshold). Without one the operator's R2
--                falls back to R1: use rollback-r1.
--   rollback-r3  enforcement and auto-threshold are on (appliedEnv.autoThreshold "1"; phase
--                AutoThreshold)
local spec = obj.spec or {}
local status = obj.status or {}
local annotations = (obj.metadata and obj.metadata.annotations) or {}
local env = status.appliedEnv

local function list(value)
  if type(value) == "table" then
    return value
  end
  return {}
end

local function as_set(symbols)
  local set = {}
  for _, s in ipairs(symbols) do
    set[s] = true
  end
  return set
end

local function size(set)
  local n = 0
  for _ in pairs(set) do
    n = n + 1
  end
  return n
end

-- `candidate` non-empty and strictly inside `current` (nil: every symbol).
local function narrower(candidate, current)
  local c = as_set(candidate)
  local n = size(c)
  if n == 0 then
    return false
  end
  if current == nil then
    return true
  end
  for s in pairs(c) do
    if not current[s] then
      return false
    end
  end
  return n < size(current)
end

local suspended = spec.suspend == true
local pending = annotations["grinder.io/rollback"] ~= nil
local phase = status.phase
local enforcing, auto, allowlist
if type(env) == "table" then
  enforcing = env.enforce == "1"
  auto = enforcing and env.autoThreshold == "1"
  allowlist = enforcing and type(env.enforceSymbols) == "string" and env.enforceSymbols ~= ""
else
  enforcing = phase == "Canary" or phase == "Expand" or phase == "Full" or phase == "AutoThreshold"
  auto = phase == "AutoThreshold"
  allowlist = phase == "Canary" or phase == "Expand"
end

local r2 = false
if enforcing then
  -- The symbols the spec lists, and the allowlist of each rung: canary, canary + batches 1..k.
  local rung = {}
  for _, s in ipairs(list(spec.canarySymbols)) do
    rung[#rung + 1] = s
  end
  local listed = as_set(rung)
  local candidates = { rung }
  for _, batch in ipairs(list(spec.expandBatches)) do
    local wider = {}
    for _, s in ipairs(rung) do
      wider[#wider + 1] = s
    end
    for _, s in ipairs(list(batch)) do
      wider[#wider + 1] = s
      listed[s] = true
    end
    rung = wider
    candidates[#candidates + 1] = rung
  end
  local known_good = {}
  for _, s in ipairs(list(status.lastKnownGoodSymbols)) do
    if listed[s] then
      known_good[#known_good + 1] = s
    end
  end
  -- The enforced set: nil is every symbol (no allowlist); unknown: no R2 offered.
  local current, known = nil, true
  if allowlist then
    if #list(status.enforcedSymbols) > 0 then
      current = as_set(list(status.enforcedSymbols))
    elseif phase == "Canary" then
      current = as_set(candidates[1])
    elseif phase == "Expand" and type(status.batch) == "number" and candidates[status.batch + 1] ~= nil then
      current = as_set(candidates[status.batch + 1])
    else
      known = false
    end
  end
  candidates[#candidates + 1] = known_good
  candidates[#candidates + 1] = list(spec.safeSymbols)
  for _, candidate in ipairs(candidates) do
    if known and narrower(candidate, current) then
      r2 = true
    end
  end
end

local can_roll_back = not suspended and not pending
local actions = {}
actions["suspend"] = { disabled = suspended }
actions["resume"] = { disabled = not suspended }
actions["rollback-r1"] = { disabled = not (can_roll_back and enforcing) }
actions["rollback-r2"] = { disabled = not (can_roll_back and r2) }
actions["rollback-r3"] = { disabled = not (can_roll_back and auto) }
return actions
