-- One POST /api/v1/cart/items per customer, then the thread stops when every customer has had
-- its turn: as many live cart actors as tokens (the memory figure of scripts/bench).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

workload = {
  once = true,
  customer = function(token, index) return { bearer = "Bearer " .. token, index = index } end,
  request = function(c)
    local variant = variants[c.index % #variants + 1]
    return "POST", "/api/v1/cart/items", '{"variant_id": "' .. variant .. '", "quantity": 1}'
  end,
  response = function(_, ok) return ok end,
}
dofile(here .. "common.lua")
