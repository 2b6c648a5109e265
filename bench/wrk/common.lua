-- Shared by the scenario scripts: thread numbering and a JSON summary.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    '{"requests":%d,"duration_s":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"socket_errors":%d,"non2xx":%d}\n',
    summary.requests, secs, summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end

function post(user, token, body)
  return wrk.format("POST", "/api/v1/voip/room.close",
    { ["X-User-Id"] = user, ["X-Auth-Token"] = token, ["Content-Type"] = "application/json" }, body)
end
