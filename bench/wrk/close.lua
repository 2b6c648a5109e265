-- (b) room.close successes, each on a room no other request closes.
-- Script args: <first room index> <threads> [<room id prefix>, default BENCH].
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
local first, nthreads, n, prefix = 0, 1, 0, "BENCH"

function init(args)
  first, nthreads = tonumber(args[1]), tonumber(args[2])
  if args[3] then prefix = args[3] end
end

function request()
  local i = first + tid + n * nthreads
  n = n + 1
  return post("bench-agent", "bench-agent-token",
    string.format('{"rid":"%s%07d","token":"bench-visitor-token"}', prefix, i))
end
