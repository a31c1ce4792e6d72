-- GET one path (path=..., default /), anonymous: the list workload and the hello-world ceiling.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local path = "/"

workload = {
  init = function(opts) path = opts.path or "/" end,
  request = function() return "GET", path end,
  response = function(_, ok) return ok end,
}
dofile(here .. "common.lua")
