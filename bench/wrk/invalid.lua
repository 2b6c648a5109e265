-- (e) 400: a body that fails validation.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
local req
function init(args) req = post("bench-agent", "bench-agent-token", '{"rid":1}') end
function request() return req end
