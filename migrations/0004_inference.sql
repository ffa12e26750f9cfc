-- OpenLoRA serving: developers' prices and one row per inference (request, payment, model, adapter,
-- tokens, latency). The attribution issue attaches its records to `inferences.id`.

-- A trained model's price per 1,000 tokens (prompt + max_tokens), in OPEN wei, set by its developer.
CREATE TABLE model_prices (
    job_id       BIGINT PRIMARY KEY REFERENCES trained_models (job_id) ON DELETE CASCADE,
    price_per_1k NUMERIC(78, 0) NOT NULL CHECK (price_per_1k > 0),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE inferences (
    id                TEXT PRIMARY KEY,
    -- what the request named: the base model's id or `ft-<job id>`
    model             TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('chat', 'completion')),
    base_model_hash   TEXT NOT NULL,
    job_id            BIGINT REFERENCES trained_models (job_id),
    adapter_hash      TEXT,
    caller            eth_address,
    -- pay_first: the client paid FeeRouter with request_id; sponsored: the daemon paid from its key;
    -- free: the base model alone, which has no data contributors to pay
    payment_mode      TEXT NOT NULL CHECK (payment_mode IN ('pay_first', 'sponsored', 'free')),
    chain_id          BIGINT,
    model_id          NUMERIC(78, 0),
    payer             eth_address,
    request_id        eth_hash,
    amount            NUMERIC(78, 0),
    price_per_1k      NUMERIC(78, 0),
    tx_hash           eth_hash,
    batch_job_id      BIGINT REFERENCES jobs (id) ON DELETE SET NULL,
    status            TEXT NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    prompt_tokens     INTEGER NOT NULL,
    max_tokens        INTEGER NOT NULL,
    completion_tokens INTEGER,
    output_tokens     INTEGER[],
    output_text       TEXT,
    finish_reason     TEXT,
    error             TEXT,
    queue_ms          INTEGER,
    first_token_ms    INTEGER,
    latency_ms        INTEGER,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at       TIMESTAMPTZ,
    CHECK ((payment_mode = 'free') = (request_id IS NULL))
);
-- a payment serves one inference: its second use finds this index taken (a failed inference frees it)
CREATE UNIQUE INDEX inferences_payment ON inferences (chain_id, payer, request_id)
    WHERE request_id IS NOT NULL AND status <> 'failed';
CREATE INDEX inferences_job ON inferences (job_id, created_at);
CREATE INDEX inferences_caller ON inferences (caller, created_at);
