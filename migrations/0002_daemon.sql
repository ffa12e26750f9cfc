-- The daemon's own state: sign-in, API keys, uploaded content, relayed contributions and the job queue.
-- Addresses and hashes use the same fixed forms as the chain index (lowercase 0x-hex, "C" collation).

-- ---------------------------------------------------------------- authentication

-- Sign-In-with-Ethereum nonces handed out by the server; a sign-in consumes its nonce (DELETE ... RETURNING),
-- so a replayed message finds nothing.
CREATE TABLE auth_nonces (
    nonce      TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX auth_nonces_expiry ON auth_nonces (expires_at);

-- Bearer credentials. Only a keccak-256 of the secret is stored. kind: 'session' (from a wallet sign-in)
-- or 'api_key' (created by `openledger keys create`).
CREATE TABLE auth_tokens (
    id           BIGSERIAL PRIMARY KEY,
    token_hash   eth_hash NOT NULL UNIQUE,
    kind         TEXT NOT NULL CHECK (kind IN ('session', 'api_key')),
    address      eth_address NOT NULL,
    label        TEXT NOT NULL DEFAULT '',
    -- operators see and manage every job, not only their own
    admin        BOOLEAN NOT NULL DEFAULT false,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);
CREATE INDEX auth_tokens_address ON auth_tokens (address);

-- ---------------------------------------------------------------- contributions

-- Uploaded content, stored once per canonical form (see daemon/src/content.rs), keyed by its keccak-256.
CREATE TABLE contents (
    content_hash eth_hash PRIMARY KEY,
    format       TEXT NOT NULL CHECK (format IN ('jsonl', 'text', 'markdown')),
    records      INTEGER NOT NULL CHECK (records > 0),
    byte_size    INTEGER NOT NULL CHECK (byte_size > 0),
    body         BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who uploaded what for which Datanet. One row per (owner, Datanet, content): uploading again returns it.
CREATE TABLE uploads (
    id           BIGSERIAL PRIMARY KEY,
    owner        eth_address NOT NULL,
    chain_id     BIGINT NOT NULL,
    datanet_id   NUMERIC(78, 0) NOT NULL,
    content_hash eth_hash NOT NULL REFERENCES contents (content_hash),
    filename     TEXT NOT NULL DEFAULT '',
    metadata_uri TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (owner, chain_id, datanet_id, content_hash)
);
CREATE INDEX uploads_content ON uploads (content_hash);

-- A contributor's signed `contributeWithSig`, relayed by the daemon's key. state: pending (accepted by the
-- API) -> submitted (transaction sent) -> confirmed (the indexer saw the event) / failed (with reason).
CREATE TABLE relays (
    id          BIGSERIAL PRIMARY KEY,
    upload_id   BIGINT NOT NULL REFERENCES uploads (id),
    contributor eth_address NOT NULL,
    nonce       NUMERIC(78, 0) NOT NULL,
    deadline    NUMERIC(78, 0) NOT NULL,
    signature   TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'submitted', 'confirmed', 'failed')),
    tx_hash     eth_hash,
    contribution_id NUMERIC(78, 0),
    error       TEXT,
    job_id      BIGINT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- a signature is good once: the same (contributor, nonce) cannot be queued twice
    UNIQUE (contributor, nonce, upload_id)
);
CREATE INDEX relays_upload ON relays (upload_id);

-- ---------------------------------------------------------------- job queue

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT NOT NULL,
    owner            eth_address NOT NULL,
    params           JSONB NOT NULL,
    state            TEXT NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    -- a queued job is not claimed before this (retry back-off)
    run_after        TIMESTAMPTZ NOT NULL DEFAULT now(),
    worker           TEXT,
    heartbeat_at     TIMESTAMPTZ,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    progress         REAL NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    result           JSONB,
    error            TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    CHECK ((state = 'running') = (worker IS NOT NULL))
);
-- The claim query's path: oldest queued job of the highest priority.
CREATE INDEX jobs_queued ON jobs (priority DESC, id) WHERE state = 'queued';
CREATE INDEX jobs_running ON jobs (heartbeat_at) WHERE state = 'running';
CREATE INDEX jobs_owner ON jobs (owner, id DESC);

CREATE TABLE job_logs (
    job_id  BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq     BIGSERIAL,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    level   TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE job_metrics (
    job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step   BIGINT NOT NULL,
    name   TEXT NOT NULL,
    value  DOUBLE PRECISION NOT NULL,
    at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, name, step)
);

-- Every `serve` process registers itself and beats; `openledger status` lists the live ones.
CREATE TABLE workers (
    id         TEXT PRIMARY KEY,
    hostname   TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    kinds      TEXT[] NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Wakes SSE streams and idle workers in every process sharing the database. Payload: the job id.
CREATE FUNCTION notify_job_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('openledger_jobs', NEW.job_id::text);
    RETURN NULL;
END $$;

CREATE FUNCTION notify_job_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('openledger_jobs', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF state, progress, cancel_requested ON jobs
    FOR EACH ROW EXECUTE FUNCTION notify_job_row();
CREATE TRIGGER job_logs_notify AFTER INSERT ON job_logs
    FOR EACH ROW EXECUTE FUNCTION notify_job_change();
