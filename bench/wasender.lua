-- wrk script: every request is a distinct, correctly signed Wasender webhook of ~1.5 KB.
local counter = 0
local thread_id = 0
local pad = string.rep("lorem ipsum dolor sit amet ", 40)

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function init(args)
  -- wrk's arguments (the URL, and any after `--`) keep concurrent wrk processes' ids apart.
  local extra = ""
  for _, arg in pairs(args) do
    extra = extra .. (arg:gsub("%W", ""))
  end
  prefix = "BENCH" .. extra .. tostring(tid) .. "X" .. tostring(os.time())
end

function request()
  counter = counter + 1
  local id = prefix .. tostring(counter)
  local body = '{"event":"messages.upsert","timestamp":1700000000,"data":{"messages":{"key":{"id":"'
    .. id .. '","fromMe":false,"remoteJid":"1234567890@s.whatsapp.net"},"pushName":"Bench",'
    .. '"messageTimestamp":1700000000,"message":{"conversation":"' .. pad .. '"}}}}'
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-Webhook-Signature"] = "bench-secret",
  }, body)
end

function done(summary, latency, requests)
  local codes = summary.errors.status
  io.write(string.format("WRK requests=%d non2xx=%d errors=%d\n", summary.requests, codes,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  io.write(string.format("WRK p50_ms=%.2f p99_ms=%.2f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
