-- POST /orders, one new order per request, for wrk (bench/wrk.py runs it). Everything but this
-- choice is in common.lua (body, arguments, the marker line done() prints).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
