-- wrk script for bench/accept.py: one request per turn on a keep-alive connection, and the
-- summary printed as one JSON line (latencies and durations in microseconds).
-- By default a send (POST /api/v1/messages as the demo Sanctuary user, or as BENCH_USERS users
-- in turn); with BENCH_GET=/path in the environment, a GET of that path instead (the
-- sequential /healthz run).
local get = os.getenv("BENCH_GET")
if get then
  wrk.method = "GET"
  wrk.path = get
else
  wrk.method = "POST"
  wrk.path = "/api/v1/messages"
  wrk.body = '{"target_node_id": "!a1b2c3d4", "text": "bench: hello from the web"}'
  wrk.headers["Content-Type"] = "application/json"
end
wrk.headers["X-User-ID"] = "33333333-3333-3333-3333-333333333333"

-- BENCH_USERS=N (N > 1): each send as the next of N users in turn, the demo user first and
-- then those bench/accept.py added (bench/accept_load.py, user_id).
local users = tonumber(os.getenv("BENCH_USERS") or "1")
if not get and users > 1 then
  local requests, turn = {}, 0
  request = function()
    if not requests[turn] then  -- formatted once per user, with wrk.headers and its own id
      local headers = {}
      for name, value in pairs(wrk.headers) do headers[name] = value end
      headers["X-User-ID"] = turn == 0 and "33333333-3333-3333-3333-333333333333"
                             or string.format("33333333-3333-3333-3333-%012x", turn)
      requests[turn] = wrk.format(nil, nil, headers)
    end
    local this = requests[turn]
    turn = (turn + 1) % users
    return this
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, ' ..
    '"timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
