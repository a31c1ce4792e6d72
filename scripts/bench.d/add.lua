-- POST /api/v1/cart/items, one unit of a variant, each customer walking its own 50 variants; every
-- 51st request of a customer is DELETE /api/v1/cart, so carts stay small (a cart holds at most 100
-- lines of at most 99 units). Operations = successful adds (the clears are not counted).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local CYCLE = 50

workload = {
  customer = function(token, index)
    return { bearer = "Bearer " .. token, n = 0, offset = index * 7 }
  end,
  request = function(c)
    if c.n % (CYCLE + 1) == CYCLE then
      c.pending = "clear"
      return "DELETE", "/api/v1/cart"
    end
    c.pending = "add"
    local variant = variants[(c.offset + c.n % (CYCLE + 1)) % #variants + 1]
    return "POST", "/api/v1/cart/items", '{"variant_id": "' .. variant .. '", "quantity": 1}'
  end,
  response = function(c, ok)
    c.n = c.n + 1
    return ok and c.pending == "add"
  end,
}
dofile(here .. "common.lua")
