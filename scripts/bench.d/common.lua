-- Shared by the wrk scripts of scripts/bench (each script sets `workload` and dofile()s this).
--
-- Customers: a file of access tokens, one a line; each wrk thread takes every T-th line, so no
-- two threads share a customer. A customer has at most one request in flight: request() takes
-- one from the thread's free list and tags the request `x-request-id: bench-c<index>-<n>`, which
-- the shop echoes, so response() knows whose answer it is (wrk's Lua has no per-connection
-- state, and answers on different connections arrive in any order). Without a token file every request is
-- anonymous.
--
-- Every answer that is not 2xx is counted and reported, never hidden: done() prints one line
-- `BENCH_JSON {...}` with requests/s, p50, p99, socket errors, non-2xx answers (and the first
-- one's status and body), and the workload's completed operations.
--
-- Arguments after `--`: key=value pairs: tokens=FILE variants=FILE threads=T quota=N (stop a
-- thread after N operations) stop_dir=DIR. A thread that stops early (its quota done, or, for a
-- `workload.once`, every customer served) first waits for its customers' answers, sending
-- GET /health/live meanwhile, then writes DIR/thread-<index>: wrk itself runs for its whole -d
-- unless sent SIGINT, which scripts/bench sends once every thread has written its file.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local function read_lines(path)
  local lines = {}
  for line in io.lines(path) do
    if line ~= "" then lines[#lines + 1] = line end
  end
  return lines
end

-- Per thread (globals, so that done() can read them with thread:get).
ops = 0
non2xx = 0
bad_status = 0
bad_body = ""
reused = 0
stopped = 0

customers = {}
free = {}
variants = {}
quota = nil
local stop_dir = nil
local sent = 0
local inflight = 0
local started = false
local next_reuse = 0

function init(args)
  local opts = {}
  for _, arg in ipairs(args) do
    local key, value = arg:match("^([%w_]+)=(.*)$")
    if key then opts[key] = value end
  end
  local count = tonumber(opts.threads or "1")
  if opts.tokens then
    local all = read_lines(opts.tokens)
    for i = 1, #all do
      if (i - 1) % count == thread_index then
        customers[#customers + 1] = workload.customer(all[i], #customers + 1)
      end
    end
    -- Taken from the end: the first customers first.
    for i = #customers, 1, -1 do free[#free + 1] = i end
  end
  if opts.variants then variants = read_lines(opts.variants) end
  quota = tonumber(opts.quota or "")
  stop_dir = opts.stop_dir
  if workload.init then workload.init(opts) end
end

-- A customer with nothing in flight; when every one is busy (an answer lost to a socket error),
-- one is shared and counted, so that it shows.
local function take_customer()
  local index = table.remove(free)
  if index then return index end
  reused = reused + 1
  next_reuse = next_reuse % #customers + 1
  return next_reuse
end

-- Once the thread's work is done: a cheap request while the last answers arrive, then the stop.
local function wind_down()
  if inflight == 0 and stopped == 0 then
    stopped = 1
    wrk.thread:stop()
    if stop_dir then
      local marker = io.open(stop_dir .. "/thread-" .. thread_index, "w")
      if marker then marker:close() end
    end
  end
  return wrk.format("GET", "/health/live")
end

function request()
  if #customers == 0 then
    local method, path, body = workload.request(nil)
    return wrk.format(method, path, body and { ["Content-Type"] = "application/json" } or nil, body)
  end
  if not started then
    -- wrk calls request() once in the first thread before it starts, to check what it returns,
    -- and never sends that one: no customer's turn is spent on it (in other threads it is sent).
    started = true
    return wrk.format("GET", "/health/live")
  end
  if (quota and ops >= quota) or (workload.once and #free == 0) then return wind_down() end
  local index = take_customer()
  local method, path, body = workload.request(customers[index])
  sent = sent + 1
  inflight = inflight + 1
  local headers = {
    ["Authorization"] = customers[index].bearer,
    ["x-request-id"] = "bench-c" .. index .. "-" .. sent,
  }
  if body then headers["Content-Type"] = "application/json" end
  return wrk.format(method, path, headers, body)
end

-- Counts a failed answer, keeping the first one's status and body for the report. Workloads call
-- it too, for a 2xx that is not a success.
function refuse(status, body)
  non2xx = non2xx + 1
  if bad_status == 0 then
    bad_status = status
    bad_body = string.sub(body or "", 1, 300)
  end
end

function response(status, headers, body)
  local ok = status >= 200 and status < 300
  if not ok then refuse(status, body) end
  local index = nil
  local id = headers["x-request-id"] or headers["X-Request-Id"]
  if id then index = tonumber(id:match("^bench%-c(%d+)%-")) end
  if index and customers[index] then
    inflight = inflight - 1
    local customer = customers[index]
    if workload.response(customer, ok, status, body) then ops = ops + 1 end
    if not workload.once then free[#free + 1] = index end
  elseif #customers == 0 then
    if workload.response(nil, ok, status, body) then ops = ops + 1 end
  end
end

local function json_string(s)
  s = s:gsub('\\', '\\\\'):gsub('"', '\\"'):gsub('[%c]', ' ')
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local total = { ops = 0, non2xx = 0, reused = 0 }
  local first_bad_status, first_bad_body = 0, ""
  for _, thread in ipairs(threads) do
    total.ops = total.ops + thread:get("ops")
    total.non2xx = total.non2xx + thread:get("non2xx")
    total.reused = total.reused + thread:get("reused")
    if first_bad_status == 0 and thread:get("bad_status") ~= 0 then
      first_bad_status = thread:get("bad_status")
      first_bad_body = thread:get("bad_body")
    end
  end
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, ' ..
    '"max_ms": %.3f, "socket_errors": %d, "non2xx": %d, "ops": %d, "ops_per_s": %.1f, ' ..
    '"reused_customers": %d, "first_bad_status": %d, "first_bad_body": %s}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect + e.read + e.write + e.timeout, total.non2xx, total.ops, total.ops / seconds,
    total.reused, first_bad_status, json_string(first_bad_body)))
end
