-- release.lua: drop every reservation of one holder from an org's quota hash.
--
-- KEYS[1]  the org's quota hash for one period (see reserve.lua for its fields)
-- ARGV[1]  holder
--
-- Returns how many fields were deleted. Holder "a" must not take "a:b"'s fields:
-- after "res:a:" only a meter (no colon) may follow.

local key = KEYS[1]
local prefix = 'res:' .. ARGV[1] .. ':'
local doomed = {}
for _, name in ipairs(redis.call('HKEYS', key)) do
  if name == 'exp:' .. ARGV[1] then
    doomed[#doomed + 1] = name
  elseif string.sub(name, 1, #prefix) == prefix
      and not string.find(name, ':', #prefix + 1, true) then
    doomed[#doomed + 1] = name
  end
end
for i = 1, #doomed, 500 do
  redis.call('HDEL', key, unpack(doomed, i, math.min(i + 499, #doomed)))
end
return #doomed
