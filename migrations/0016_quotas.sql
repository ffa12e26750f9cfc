-- Per-address daily quotas (see daemon/src/quotas.rs): one row per charge, written in the transaction of the
-- action it pays for (an upload, a relay, a job), so a refused or rolled-back action is never counted and
-- several `serve` processes share one count. `ref` makes a charge idempotent (a job's steps, charged when its
-- run resolves them, are charged once whatever the attempts). Rows older than the window are swept on the
-- next charge of the same owner and quota.
CREATE TABLE quota_usage (
    id     BIGSERIAL PRIMARY KEY,
    owner  eth_address NOT NULL,
    quota  TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    ref    TEXT,
    at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX quota_usage_window ON quota_usage (owner, quota, at);
CREATE UNIQUE INDEX quota_usage_ref ON quota_usage (owner, quota, ref) WHERE ref IS NOT NULL;

-- The indexer's progress wakes pay-first requests waiting for their payment (every process sharing the
-- database), instead of each polling the index.
CREATE FUNCTION notify_index_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('openledger_index', '');
    RETURN NULL;
END $$;
CREATE TRIGGER indexer_checkpoints_notify AFTER INSERT OR UPDATE ON indexer_checkpoints
    FOR EACH ROW EXECUTE FUNCTION notify_index_progress();
