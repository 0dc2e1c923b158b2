-- wrk script: single heartbeats (POST /v1/heartbeats) from many enrolled devices, each request
-- in its device's next fresh 10-second bucket, so the service stores every one.
--
-- wrk -t T -c C -d S -s wrk_heartbeats.lua URL -- DEVICES_FILE T
-- DEVICES_FILE: one line per device, "token start_epoch first limit offset": bucket k of the
-- device is start_epoch + 10 * ((first + k) % limit) + offset (seconds since the epoch, UTC).
-- Thread t (1-based) sends for devices t, t + T, t + 2T, …, so each device's bucket counter
-- lives in one thread. done() prints one JSON line starting with "WRK_RESULT ".
--
-- Paced: with WRK_MEAN_DELAY_MS=D in the environment, each connection waits an exponentially
-- distributed time of mean D ms after each answer before its next request (C connections offer
-- about C * 1000 / (D + latency) req/s, Poisson-like rather than in lock step). wrk measures
-- latency from the moment a request is written, so the wait is not part of it. The function
-- must exist from the top level for wrk to use it, hence the environment, not init()'s args.
local mean_delay_ms = tonumber(os.getenv("WRK_MEAN_DELAY_MS") or "0")
if mean_delay_ms > 0 then
  function delay()
    return math.floor(-math.log(1 - math.random()) * mean_delay_ms + 0.5)
  end
end

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

local devices = {}
local idx = 1
local step = 1

function init(args)
  step = tonumber(args[2])
  for line in io.lines(args[1]) do
    local token, start, first, limit, offset = line:match("(%S+) (%S+) (%S+) (%S+) (%S+)")
    devices[#devices + 1] = {
      auth = "Bearer " .. token,
      start = tonumber(start),
      first = tonumber(first),
      limit = tonumber(limit),
      offset = tonumber(offset),
      k = 0,
    }
  end
  idx = tid
  math.randomseed(tid * 7919)
end

function request()
  local d = devices[idx]
  idx = idx + step
  if idx > #devices then
    idx = tid
  end
  local b = (d.first + d.k) % d.limit
  d.k = d.k + 1
  local ts = os.date("!%Y-%m-%dT%H:%M:%S", d.start + 10 * b + d.offset) .. "Z"
  local body = '{"ts":"' .. ts .. '","status":"ok","battery_pct":' .. (5 + b % 95)
    .. ',"app_version":"4.12.0","network":"wifi"}'
  return wrk.format("POST", "/v1/heartbeats", {
    ["Authorization"] = d.auth,
    ["Content-Type"] = "application/json",
  }, body)
end

-- done(): the WRK_RESULT line, from the script beside this one.
dofile(debug.getinfo(1, "S").source:match("^@(.*[/\\])") .. "wrk_result.lua")
