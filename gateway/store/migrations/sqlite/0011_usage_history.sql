-- Usage history: what each (org, meter) used in each hour (bucket: epoch seconds of the
-- hour's start), written in the transaction that applies a usage batch.
CREATE TABLE usage_history (
    org_id TEXT NOT NULL,
    meter TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (org_id, meter, bucket)
);
CREATE INDEX usage_history_bucket ON usage_history (bucket);
