-- A full checkout per operation, three requests in a row for one customer: add a unit to the
-- cart, POST /api/v1/orders, POST /api/v1/orders/{id}/pay with pm_card_visa (the simulated
-- provider). Operations = payments that succeeded. With pay=false (the pending-orders figure) a
-- checkout stops at the order, which stays pending.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local pay = true
local ADDRESS = '{"shipping_address": {"name": "Bench", "line1": "1 Main St", "city": "Springfield", '
  .. '"postal_code": "12345", "country": "US"}}'

workload = {
  init = function(opts) pay = opts.pay ~= "false" end,
  customer = function(token, index)
    return { bearer = "Bearer " .. token, step = "add", n = 0, offset = index * 13 }
  end,
  request = function(c)
    if c.step == "order" then
      return "POST", "/api/v1/orders", ADDRESS
    elseif c.step == "pay" then
      return "POST", "/api/v1/orders/" .. c.order .. "/pay", '{"payment_method": "pm_card_visa"}'
    end
    c.n = c.n + 1
    local variant = variants[(c.offset + c.n) % #variants + 1]
    return "POST", "/api/v1/cart/items", '{"variant_id": "' .. variant .. '", "quantity": 1}'
  end,
  response = function(c, ok, status, body)
    if not ok then
      c.step = "add"
      return false
    end
    if c.step == "add" then
      c.step = "order"
    elseif c.step == "order" then
      c.order = body:match('^{"id":"([%x%-]+)"')
      if not c.order then
        refuse(status, body)
        c.step = "add"
      elseif pay then
        c.step = "pay"
      else
        c.step = "add"
        return true
      end
    else
      c.step = "add"
      if body:find('"status":"succeeded"', 1, true) then return true end
      -- A 200 that is not a success (a declined or failed payment) counts as failed too.
      refuse(status, body)
    end
    return false
  end,
}
dofile(here .. "common.lua")
