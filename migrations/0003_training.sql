-- ModelFactory: installed base models, and the LoRA adapters training jobs produced with their provenance.

-- Base models the daemon can train on, found under <data dir>/models (or added by path). The hash is cached
-- with the file's size and mtime so it is recomputed only when the file changes.
CREATE TABLE base_models (
    id           TEXT PRIMARY KEY,
    path         TEXT NOT NULL UNIQUE,
    format       TEXT NOT NULL CHECK (format IN ('gguf', 'safetensors')),
    architecture TEXT NOT NULL,
    hash         TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL,
    modified_at  TIMESTAMPTZ NOT NULL,
    config       JSONB NOT NULL,
    added_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per successful training job, written in the same transaction that makes its artifacts visible.
CREATE TABLE trained_models (
    job_id          BIGINT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    owner           eth_address NOT NULL,
    base_model      TEXT NOT NULL,
    base_model_hash TEXT NOT NULL,
    -- [{"datanet_id": "1", "version": "2", "root": "0x.."}]
    datanets        JSONB NOT NULL,
    adapter_hash    TEXT NOT NULL,
    manifest_hash   TEXT NOT NULL,
    dir             TEXT NOT NULL,
    metrics         JSONB NOT NULL,
    -- filled in as the on-chain steps complete
    chain_id        BIGINT,
    model_id        NUMERIC(78, 0),
    adapter_id      NUMERIC(78, 0),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX trained_models_owner ON trained_models (owner, job_id);
CREATE UNIQUE INDEX trained_models_model ON trained_models (chain_id, model_id) WHERE model_id IS NOT NULL;

-- Which contribution each training source index stands for: what attribution maps examples back to.
CREATE TABLE training_sources (
    job_id          BIGINT NOT NULL REFERENCES trained_models (job_id) ON DELETE CASCADE,
    source          INTEGER NOT NULL,
    datanet_id      NUMERIC(78, 0) NOT NULL,
    contribution_id NUMERIC(78, 0) NOT NULL,
    contributor     eth_address NOT NULL,
    content_hash    TEXT NOT NULL,
    examples        INTEGER NOT NULL,
    tokens          BIGINT NOT NULL,
    PRIMARY KEY (job_id, source)
);
CREATE INDEX training_sources_contributor ON training_sources (contributor);
