-- keep_grant.lua: after the truth recorded a grant, make sure Redis still counts it.
--
-- KEYS[1]  the org's quota hash for one period (see reserve.lua for its fields)
-- ARGV[1]  holder
-- ARGV[2]  the ready token reserve.lua returned with the grant
-- ARGV[3]  now, epoch seconds
-- ARGV[4]  the holder's expiry (now + ttl)
-- ARGV[5..] meter, amount pairs granted
--
-- Redis may have lost the hash while the grant was written through, and another replica
-- may have rebuilt it from a truth that did not hold the grant yet. Returns
-- 0 when the hash still has the token (it holds the grant), or is gone (the next load
--   reads the truth, which holds it now);
-- 1 when a rebuild is under way: its fence is taken down, as its snapshot may predate
--   the grant, so that it reads the truth again;
-- 2 when the hash was reloaded: the grant is added to it. If that load read the truth
--   after the write-through, the grant counts twice until the holder's reservation ends:
--   Redis refuses a little early, never admits too much.

local key = KEYS[1]
local ready = redis.call('HGET', key, 'ready')
if ready == ARGV[2] then
  return 0
end
if not ready then
  if redis.call('HDEL', key, 'loading') == 1 then
    return 1
  end
  return 0
end

-- A dead holder's fields count for nothing (as in reserve.lua): drop them, then grant.
local holder = ARGV[1]
local expires_at = tonumber(redis.call('HGET', key, 'exp:' .. holder))
if not expires_at or expires_at <= tonumber(ARGV[3]) then
  local prefix = 'res:' .. holder .. ':'
  for _, name in ipairs(redis.call('HKEYS', key)) do
    if string.sub(name, 1, #prefix) == prefix
        and not string.find(name, ':', #prefix + 1, true) then
      redis.call('HDEL', key, name)
    end
  end
  expires_at = nil
end
for i = 5, #ARGV, 2 do
  redis.call('HINCRBY', key, 'res:' .. holder .. ':' .. ARGV[i], ARGV[i + 1])
end
if not expires_at or expires_at < tonumber(ARGV[4]) then
  redis.call('HSET', key, 'exp:' .. holder, ARGV[4])
end
return 2
