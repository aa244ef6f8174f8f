-- POST /orders/batch, a JSON array of n new orders per request (n=, default 100; the producer
-- takes at most BATCH_MAX_ITEMS, 1000), for wrk (bench/wrk.py runs it). The producer validates a
-- batch all-or-nothing and answers 201 {"orders": [...], "count": n} or an error for the whole
-- batch, so the orders accepted are n per 2xx answer; the body is not parsed. The rest is in
-- common.lua.
default_path, default_n = "/orders/batch", 100
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
