-- An org's own URL for its usage and billing notifications (NULL: GATEWAY_NOTIFY_URL).
ALTER TABLE orgs ADD COLUMN notify_url TEXT;
