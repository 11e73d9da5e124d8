-- Argo CD health check for grinder.io/FillProbRollout (runbook 32 as a controller).
-- Source of truth: gitops/argocd/argocd-cm-patch.yaml is rendered from this file by
-- gitops/argocd/render.py. Argo CD runs a custom override in gopher-lua (Lua 5.1) with only
-- the base, table and package libraries (no string, math, os: see README.md), so this script
-- uses none of string.*, math.* or s:method() calls. gitops/argocd/luatest runs it that way
-- (go test); tests/unit/test_argocd_health.py also runs it in Lua 5.1 (lupa).
--
-- Verdicts, first match wins:
--   1. no status yet                                  -> Progressing (the operator has not reported)
--   2. status.observedGeneration < metadata.generation -> Progressing (a new spec is not acted on yet)
--   3. state Halted or RolledBack, or Degraded=True   -> Degraded (a rollout that stopped or went back
--      never climbs again on its own; suspending it does not hide that)
--   4. state Suspended or spec.suspend                -> Suspended
--   5. MetricsAvailable=False                         -> Progressing: missing data is neither go nor
--      no-go, the observation window is on hold, and a Passed step is not being guarded
--   6. state Passed at targetPhase's step (for Expand: the last batch, step "Expand N/N") and
--      Ready=True -> Healthy
--   7. anything else (Pending, Preflight, Restarting, Verifying, Observing, Passed below
--      or above the target, Passed at target without Ready=True) -> Progressing
local hs = {}

local LADDER = { Preflight = 0, Shadow = 1, Canary = 2, Expand = 3, Full = 4, AutoThreshold = 5 }

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c == nil then
    return ""
  end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": " .. c.message
    else
      text = c.message
    end
  end
  return text
end

local function where(status)
  local label = status.step or status.phase or "?"
  return (status.state or "Pending") .. " at " .. label
end

local function with(text, extra)
  if extra == nil or extra == "" then
    return text
  end
  return text .. " (" .. extra .. ")"
end

-- The CRD allows at most 20 expandBatches; the operator labels batch k of N "Expand k/N".
local MAX_BATCHES = 50

-- Is `step` the label of the last Expand batch ("Expand N/N")? Without the string library the
-- label is compared with each "Expand N/N" it could be, not parsed. A bare "Expand" (no batch
-- label) counts as the last batch, as before.
local function last_batch(step)
  if step == nil or step == "Expand" then
    return true
  end
  for n = 1, MAX_BATCHES do
    if step == "Expand " .. tostring(n) .. "/" .. tostring(n) then
      return true
    end
  end
  return false
end

-- The last Expand batch is the target when targetPhase is Expand: step "Expand k/N" with k == N.
local function at_target(spec, status)
  if status.phase == nil or spec.targetPhase == nil then
    return false
  end
  if status.phase ~= spec.targetPhase then
    return false
  end
  if status.phase == "Expand" then
    return last_batch(status.step)
  end
  return true
end

local spec = obj.spec or {}
local status = obj.status

if status == nil or status.state == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation) ..
    " (observed " .. tostring(status.observedGeneration or "none") .. "); last: " .. where(status)
  return hs
end

local degraded = condition(status, "Degraded")
if status.state == "Halted" or status.state == "RolledBack" or (degraded ~= nil and degraded.status == "True") then
  local why = ""
  if degraded ~= nil and degraded.status == "True" then
    why = describe(degraded)
  end
  if why == "" and status.lastRollback ~= nil and status.state == "RolledBack" then
    why = (status.lastRollback.playbook or "rollback") .. " " .. (status.lastRollback.reason or "")
  end
  if why == "" and status.history ~= nil and #status.history > 0 then
    why = status.history[#status.history].reason or ""
  end
  hs.status = "Degraded"
  hs.message = with(where(status), why)
  if spec.suspend == true then
    hs.message = hs.message .. "; suspended"
  end
  return hs
end

if status.state == "Suspended" or spec.suspend == true then
  hs.status = "Suspended"
  hs.message = with("Suspended at " .. (status.step or status.phase or "?"), "spec.suspend: the operator changes nothing")
  return hs
end

local metrics = condition(status, "MetricsAvailable")
if metrics ~= nil and metrics.status == "False" then
  hs.status = "Progressing"
  hs.message = with(where(status), "MetricsAvailable=False, observation on hold: " .. describe(metrics))
  return hs
end

local ready = condition(status, "Ready")
if status.state == "Passed" and at_target(spec, status) then
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = with("Passed at " .. (status.step or status.phase) .. ", the target", describe(ready))
    return hs
  end
  hs.status = "Progressing"
  hs.message = with(where(status) .. ", waiting for Ready=True", describe(ready))
  return hs
end

hs.status = "Progressing"
local target = spec.targetPhase or "?"
local note = ""
if status.state == "Passed" and LADDER[status.phase] ~= nil and LADDER[target] ~= nil then
  if LADDER[status.phase] > LADDER[target] then
    note = "moving down to " .. target
  else
    note = "walking up to " .. target
  end
else
  note = "target " .. target
end
local progressing = condition(status, "Progressing")
if progressing ~= nil and progressing.message ~= nil and progressing.message ~= "" then
  note = note .. "; " .. progressing.message
end
hs.message = with(where(status), note)
return hs
