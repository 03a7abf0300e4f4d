-- wrk script: POST /v1/slates, k=10, for 500 rotating users. Every other request carries a
-- viewed item in session_items, so half the slates run the similar and session generators
-- (HNSW queries) and half come from popular and fresh items only.
--   slatebandit serve --demo --demo-items 100000 --workers 2 &
--   wrk -t2 -c64 -d15s --latency -s benchmarks/wrk_slates.lua http://127.0.0.1:8000
-- wrk (Debian package "wrk") takes far less CPU from the 2-core box than a Python client.
local n = 0
math.randomseed(7)

request = function()
  n = n + 1
  local session = ""
  if n % 2 == 0 then
    session = string.format(',"session_items":["sku-%07d"]', math.random(0, 9999))
  end
  local body = string.format(
    '{"user_id":"u%d","k":10,"context":{"device":"mobile","page":"home"}%s}', n % 500, session)
  return wrk.format("POST", "/v1/slates", {["Content-Type"] = "application/json"}, body)
end
