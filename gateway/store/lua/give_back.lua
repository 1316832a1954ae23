-- give_back.lua: undo a grant of reserve.lua that the truth did not record.
--
-- KEYS[1]  the org's quota hash for one period (see reserve.lua for its fields)
-- ARGV[1]  holder
-- ARGV[2]  the ready token reserve.lua returned with the grant
-- ARGV[3..] meter, amount pairs taken off res:<holder>:<meter>, clamped at 0
--
-- Returns 1 when given back, 0 when the hash was reloaded since the grant: the new
-- contents came from the truth, which never had the grant, so there is nothing to undo.

local key = KEYS[1]
if redis.call('HGET', key, 'ready') ~= ARGV[2] then
  return 0
end
for i = 3, #ARGV, 2 do
  local field = 'res:' .. ARGV[1] .. ':' .. ARGV[i]
  local current = redis.call('HGET', key, field)
  if current then
    local amount = math.max(0, tonumber(current) - tonumber(ARGV[i + 1]))
    redis.call('HSET', key, field, string.format('%d', amount))
  end
end
return 1
