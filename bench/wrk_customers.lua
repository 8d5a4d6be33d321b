-- wrk script for the meterproxy benchmark.
-- Every request carries X-Customer-Id from a rotating set of 10,000 ids (cus_00000 ..
-- cus_09999), so meterproxy's per-customer aggregates are exercised as in production.
-- At the end it prints one line "BENCH {json}" that bench/loadgen.py reads: request
-- count, duration, errors and latency percentiles in microseconds.

local customers = tonumber(os.getenv("BENCH_CUSTOMERS") or "10000")
local counter = 0

request = function()
  counter = counter + 1
  local id = string.format("cus_%05d", counter % customers)
  return wrk.format(nil, nil, { ["X-Customer-Id"] = id })
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50.0), latency:percentile(99.0)))
end
