-- (c) 401: a random token on every request.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
function init(args) math.randomseed(os.time() + tid) end
function request()
  return post("bench-agent", string.format("%d%d", math.random(1, 1e9), math.random(1, 1e9)),
    '{"rid":"BENCH0000000","token":"bench-visitor-token"}')
end
