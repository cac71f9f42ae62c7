-- wrk script for bench/accept.py: one request per turn on a keep-alive connection, and the
-- summary printed as one JSON line (latencies and durations in microseconds).
-- By default a send (POST /api/v1/messages as the demo Sanctuary user); with BENCH_GET=/path in
-- the environment, a GET of that path instead (the sequential /healthz run).
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

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, ' ..
    '"timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
