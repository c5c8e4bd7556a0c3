-- Argo CD health check for evaluation.dev/EvaluationTask.
-- Evaluating -> Progressing, Completed -> Healthy, Failed -> Degraded. A completed run that
-- missed one of its spec.gates (condition Passed=False) is Degraded: the evaluation worked,
-- the model did not pass. A task cancelled on purpose (spec.cancel, reason Cancelled) is
-- Suspended: stopped by someone, not broken. A task whose results cannot be purged (it
-- stays, deleting) is Degraded too, so the stuck deletion is visible.
-- Lua 5.1 as Argo CD runs it (gopher-lua); no libraries beyond string and table.
local hs = {}

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function progressing(message)
  hs.status = "Progressing"
  hs.message = message
  return hs
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  return progressing("Waiting for the evaluation operator to pick the task up")
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < generation then
  return progressing("Waiting for the operator to observe generation " .. tostring(generation))
end

local purge = condition(status, "ResultsPurged")
if purge ~= nil and purge.status == "False" then
  hs.status = "Degraded"
  hs.message = purge.message or "Deleting the results failed"
  return hs
end

if status.phase == "Failed" and status.reason == "Cancelled" then
  hs.status = "Suspended"
  hs.message = "Cancelled: " .. (status.message or "spec.cancel is true")
  return hs
end

local stalled = condition(status, "Stalled")
if status.phase == "Failed" or (stalled ~= nil and stalled.status == "True") then
  hs.status = "Degraded"
  local reason = status.reason or (stalled and stalled.reason) or "Failed"
  hs.message = reason .. ": " .. (status.message or (stalled and stalled.message) or "")
  return hs
end

local passed = condition(status, "Passed")
if status.phase == "Completed" and passed ~= nil and passed.status == "False" then
  hs.status = "Degraded"
  hs.message = (passed.reason or "GatesFailed") .. ": " .. (passed.message or "")
  return hs
end

if status.phase == "Completed" then
  hs.status = "Healthy"
  if status.overallScore ~= nil then
    hs.message = string.format("Completed: overall score %.4f", status.overallScore)
  else
    hs.message = "Completed"
  end
  return hs
end

local message = status.message or status.phase
if status.progress ~= nil and status.progress.text ~= nil then
  message = message .. " (" .. status.progress.text .. " samples)"
end
return progressing(message)
