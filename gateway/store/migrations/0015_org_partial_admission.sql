-- An org's own choice of partial admission at an items limit (NULL: GATEWAY_PARTIAL_ADMISSION).
ALTER TABLE orgs ADD COLUMN partial_admission BOOLEAN;
