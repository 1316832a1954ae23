-- Limits on one signal's meters (traces.items, logs.bytes, ...) beside the totals and rates.
ALTER TABLE org_limits DROP CONSTRAINT IF EXISTS org_limits_name_check;
ALTER TABLE org_limits ADD CONSTRAINT org_limits_name_check CHECK (name IN (
    'requests', 'bytes', 'items', 'rate_requests', 'rate_bytes',
    'traces.requests', 'traces.bytes', 'traces.items',
    'logs.requests', 'logs.bytes', 'logs.items',
    'metrics.requests', 'metrics.bytes', 'metrics.items',
    'logpush.requests', 'logpush.bytes', 'logpush.items'
));
