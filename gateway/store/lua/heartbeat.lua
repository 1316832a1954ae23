-- heartbeat.lua: keep one holder's reservations in an org's quota hash alive.
--
-- KEYS[1]  the org's quota hash for one period (see reserve.lua for its fields)
-- ARGV[1]  holder
-- ARGV[2]  now, epoch seconds
-- ARGV[3]  the holder's new expiry (now + ttl)
--
-- Returns 1 when extended, 0 when the holder has nothing live there: a dead
-- reservation stays dead, as in the truth.

local key = KEYS[1]
local field = 'exp:' .. ARGV[1]
local expires_at = tonumber(redis.call('HGET', key, field))
if not expires_at or expires_at <= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', key, field, ARGV[3])
return 1
