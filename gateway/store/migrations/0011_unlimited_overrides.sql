-- An org's own limit may be NULL: an override to unlimited, whatever its plan's limit.
ALTER TABLE org_limits ALTER COLUMN value DROP NOT NULL;
