-- (d) 403: a user whose roles lack inbound-voip-calls.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")
local req
function init(args) req = post("bench-viewer", "bench-viewer-token", '{"rid":"BENCH0000000","token":"bench-visitor-token"}') end
function request() return req end
