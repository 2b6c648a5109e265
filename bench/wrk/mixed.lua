-- The memory run: every outcome that writes nothing, in turn.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
local reqs, n = {}, 0
function init(args)
  reqs = {
    wrk.format("GET", "/api/v1/me"),
    post("bench-agent", "wrong-token", '{}'),
    post("bench-agent", "bench-agent-token", '{"rid":1}'),
    post("bench-viewer", "bench-viewer-token", '{"rid":"BENCH0000000","token":"bench-visitor-token"}'),
    post("bench-agent", "bench-agent-token", '{"rid":"BENCH0000000","token":"nobody"}'),
    post("bench-agent", "bench-agent-token", '{"rid":"nowhere","token":"bench-visitor-token"}'),
    post("bench-agent", "bench-agent-token", '{"rid":"CLOSED","token":"bench-visitor-token"}'),
  }
end
function request()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end
