-- wrk script: GET requests, each to a path drawn at random from a file.
--
-- wrk -t T -c C -d S -s wrk_gets.lua BASE_URL -- INPUT_FILE T
-- INPUT_FILE: request headers ("Name: value", one per line), an empty line, then one path per
-- line. done() prints one JSON line starting with "WRK_RESULT " (as wrk_heartbeats.lua).

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

local headers = {}
local paths = {}

function init(args)
  local in_headers = true
  for line in io.lines(args[1]) do
    if in_headers then
      if line == "" then
        in_headers = false
      else
        local name, value = line:match("^([^:]+):%s*(.*)$")
        headers[name] = value
      end
    elseif line ~= "" then
      paths[#paths + 1] = line
    end
  end
  math.randomseed(tid * 104729)
end

function request()
  return wrk.format("GET", paths[math.random(#paths)], headers)
end

-- done(): the WRK_RESULT line, from the script beside this one.
dofile(debug.getinfo(1, "S").source:match("^@(.*[/\\])") .. "wrk_result.lua")
