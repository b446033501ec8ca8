-- S8's wrk script. S8_MODE=post: POST /v1/sites with a fresh domain per request (S8_PREFIX
-- names the round, the thread id and a counter make it unique), bearer S8_TOKEN.
-- S8_MODE=hello: GET the hello-world route. done() prints one JSON line for bench/s8_ingress.py.
local mode = os.getenv("S8_MODE") or "hello"
local prefix = os.getenv("S8_PREFIX") or "s8"
local token = os.getenv("S8_TOKEN") or ""
local threads = 0
local counter = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function request()
  if mode ~= "post" then
    return wrk.format("GET", "/bench/hello")
  end
  counter = counter + 1
  local domain = string.format("%s-%d-%d.example", prefix, tid, counter)
  local body = '{"domain":"' .. domain .. '","template":"landing","params":{"title":"'
    .. domain .. '","contact_email":"owner@example.org","tagline":"Fresh bread daily"}}'
  return wrk.format("POST", "/v1/sites", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
