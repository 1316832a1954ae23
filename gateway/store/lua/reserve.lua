-- reserve.lua: grant quota to one holder on every limited meter of an org, or on none.
--
-- KEYS[1]  the org's quota hash for one period: {prefix}:{org}:q:{period_start}
--          fields: ready, used:<meter>, res:<holder>:<meter>, exp:<holder>; before the
--          first load only loading and applied:<marker> (see fence.lua)
-- ARGV[1]  holder
-- ARGV[2]  now, epoch seconds (a holder whose exp:<holder> is not above it is dead)
-- ARGV[3]  the holder's new expiry (now + ttl), stored as given
-- ARGV[4]  EXPIREAT of the hash, integer epoch seconds (period end + grace)
-- ARGV[5]  "1" for strict: grant exactly what is needed
-- ARGV[6]  replicas sharing the org (chunks shrink with it)
-- ARGV[7..] four per limited meter, in METERS order: meter, need, limit, max chunk
--
-- Returns {0} when the hash is not loaded (the caller rebuilds it from the truth),
-- {1, meter, limit, taken, used} when a meter cannot cover its need (nothing changes),
-- {2, ready token, grant...} with one grant per meter, in ARGV order.
-- taken = used + every live holder's reservation; dead holders' fields are dropped.

local key = KEYS[1]
local ready = redis.call('HGET', key, 'ready')
if not ready then
  return {0}
end

local holder = ARGV[1]
local now = tonumber(ARGV[2])
local fields = redis.call('HGETALL', key)
local used, expiry, reservations = {}, {}, {}
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if string.sub(name, 1, 5) == 'used:' then
    used[string.sub(name, 6)] = tonumber(value)
  elseif string.sub(name, 1, 4) == 'exp:' then
    expiry[string.sub(name, 5)] = tonumber(value)
  elseif string.sub(name, 1, 4) == 'res:' then
    -- Greedy: the meter is after the last colon, so holders may contain colons.
    local who, meter = string.match(name, '^res:(.*):([^:]*)$')
    if who then
      reservations[#reservations + 1] = {name, who, meter, tonumber(value)}
    end
  end
end

local dead = {}
for who, expires_at in pairs(expiry) do
  if expires_at <= now then
    dead[#dead + 1] = 'exp:' .. who
  end
end
local reserved = {}
for _, row in ipairs(reservations) do
  local expires_at = expiry[row[2]]
  if expires_at and expires_at > now then
    reserved[row[3]] = (reserved[row[3]] or 0) + row[4]
  else
    dead[#dead + 1] = row[1]
  end
end
for i = 1, #dead, 500 do
  redis.call('HDEL', key, unpack(dead, i, math.min(i + 499, #dead)))
end

local strict = ARGV[5] == '1'
local replicas = math.max(1, tonumber(ARGV[6]))
local meters, grants = {}, {}
for i = 7, #ARGV, 4 do
  local meter = ARGV[i]
  local need, limit, max_chunk = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local taken = (used[meter] or 0) + (reserved[meter] or 0)
  local remaining = limit - taken
  if remaining < need then
    return {1, meter, limit, taken, used[meter] or 0}
  end
  local grant = need
  if not strict and need < remaining then
    grant = math.max(need, math.min(max_chunk, math.floor(remaining / (2 * replicas))))
  end
  meters[#meters + 1] = meter
  grants[#grants + 1] = grant
end

for i, meter in ipairs(meters) do
  if grants[i] > 0 then
    -- %d, not tostring: Lua prints large numbers as 1e+15, which HINCRBY refuses.
    redis.call('HINCRBY', key, 'res:' .. holder .. ':' .. meter, string.format('%d', grants[i]))
  end
end
redis.call('HSET', key, 'exp:' .. holder, ARGV[3])
redis.call('EXPIREAT', key, ARGV[4])

local reply = {2, ready}
for i = 1, #grants do
  reply[#reply + 1] = grants[i]
end
return reply
