-- What order.lua, batch.lua and paced.lua share (each loads it with dofile, then adds its part).
--
-- Before dofile a script may set: default_path (the path used when the URL's is "/"; default
-- /orders) and default_n (orders per request; nil sends one order object, a number sends a
-- JSON array of that many).
--
-- Body of one order: {"orderId": "<prefix>-t<thread>-<k>", "product": "Item-<k>", "quantity": 1,
-- "userId": 100} with Content-Type: application/json. Every orderId is unique across items,
-- threads and connections (a per-thread id set in setup() plus a per-thread counter; all
-- connections of a thread share one Lua state) and across runs when each run passes its own
-- prefix.
--
-- Script arguments (after "--", key=value): prefix=<run-unique prefix> (default "w<unix time>";
-- letters, digits, ".", "_", ":", "-"), n=<orders per request> (array bodies only), count=0 to
-- skip response() (then non2xx is wrk's own count of status > 399), delay=<ms> (paced.lua).
-- done() prints one line: ORDERSTREAM_WRK_JSON {requests, duration_us, errors{...}, non2xx,
-- status{"200": n, ...}, p50_us, p90_us, p99_us, p999_us, max_us, mean_us, orders_per_request
-- [, delay_ms]}.

local threads = {}
local next_tid = 0

function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  thread:set("default_prefix", "w" .. os.time())
  table.insert(threads, thread)
end

local prefix, counter, path = nil, 0, default_path or "/orders"
n = default_n -- global: done() reads it with thread:get
wait_ms = nil -- global: set from delay=, read by paced.lua's delay() and by done()
local body_fmt = '{"orderId":"%s-t%d-%d","product":"Item-%d","quantity":1,"userId":100}'
local headers = {["Content-Type"] = "application/json"}
non2xx, statuses = 0, {}

local function parse_args(args)
  local kv = {}
  for _, a in ipairs(args or {}) do
    local k, v = string.match(a, "^([%w_]+)=(.*)$")
    if k then kv[k] = v end
  end
  return kv
end

function init(args)
  local kv = parse_args(args)
  prefix = kv.prefix or default_prefix
  if wrk.path and wrk.path ~= "/" then path = wrk.path end
  if kv.count == "0" then response = nil end
  if n ~= nil then n = tonumber(kv.n or tostring(n)) or n end
  if kv.delay then wait_ms = tonumber(kv.delay) or 10 end
end

local items = {}

function request()
  if n == nil then
    counter = counter + 1
    return wrk.format("POST", path, headers, string.format(body_fmt, prefix, tid, counter, counter))
  end
  for i = 1, n do
    counter = counter + 1
    items[i] = string.format(body_fmt, prefix, tid, counter, counter)
  end
  for i = n + 1, #items do items[i] = nil end
  return wrk.format("POST", path, headers, "[" .. table.concat(items, ",") .. "]")
end

function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

function done(summary, latency, requests)
  local e = summary.errors
  local n2, st, counted = 0, {}, false
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for code, c in pairs(s) do
        counted = true
        st[tostring(code)] = (st[tostring(code)] or 0) + c
      end
    end
    n2 = n2 + (t:get("non2xx") or 0)
  end
  if not counted then n2 = e.status end
  local parts = {}
  for code, c in pairs(st) do table.insert(parts, string.format('"%s":%d', code, c)) end
  local wait = threads[1] and threads[1]:get("wait_ms")
  io.write(string.format(
    'ORDERSTREAM_WRK_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"non2xx":%d,"status":{%s},"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,"orders_per_request":%d%s}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    n2, table.concat(parts, ","), latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, (threads[1] and threads[1]:get("n")) or 1,
    wait and string.format(',"delay_ms":%g', wait) or ""))
end
