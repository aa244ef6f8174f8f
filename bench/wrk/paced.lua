-- POST /orders at a bounded rate: like order.lua, but each connection waits delay ms (delay=,
-- default 10; wrk's timers have whole-millisecond resolution) before each request, so the
-- offered rate is about connections / (delay + latency). Used for the end-to-end latency at a
-- fixed fraction of the peak rate; wrk measures latency from sending a request to its answer,
-- the wait is not part of it. The rest is in common.lua.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function delay()
  return wait_ms or 10
end
