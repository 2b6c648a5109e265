-- (b) room.close successes, each on a room no other request closes.
-- Script args: <first room index> <threads>.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
local first, nthreads, n = 0, 1, 0

function init(args)
  first, nthreads = tonumber(args[1]), tonumber(args[2])
end

function request()
  local i = first + tid + n * nthreads
  n = n + 1
  return post("bench-agent", "bench-agent-token",
    string.format('{"rid":"BENCH%07d","token":"bench-visitor-token"}', i))
end
