-- wrk script: POST one fixed JSON body to the URL, then print one summary line.
--
--   wrk -t1 -c16 -d10s -s bench/wrk/post.lua http://127.0.0.1:8080/predict -- body.json
--
-- The body is read once from the file named after `--`. Every connection keeps
-- sending it back to back. wrk counts non-2xx/3xx answers as status errors.
-- done() prints `WRK_JSON {...}`: counts, duration and latency percentiles in
-- microseconds, for bench/run.py to parse.

function init(args)
  local path = args[1]
  if path == nil then
    error("give the body file after --")
  end
  local file = assert(io.open(path, "rb"))
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
