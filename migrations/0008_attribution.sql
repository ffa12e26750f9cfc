-- Proof of Attribution: one record per inference of a trained adapter, written in the same transaction
-- that marks the inference succeeded, and its payout weights per training source (contribution) for
-- settlement. Weights are parts per million of the inference's contributor pool; what the sources do not
-- get (`no_attribution`) goes to the protocol.
CREATE TABLE attributions (
    inference_id   TEXT PRIMARY KEY REFERENCES inferences (id) ON DELETE CASCADE,
    job_id         BIGINT NOT NULL REFERENCES trained_models (job_id),
    method         TEXT NOT NULL,
    -- complete: weights final; pending: the gradient part is queued; flagged: it could not be attributed
    -- (error says why) and must not be settled until it is
    status         TEXT NOT NULL CHECK (status IN ('pending', 'complete', 'flagged')),
    -- the prompt as the model saw it (gradient attribution and `attribution verify` recompute from it)
    prompt_tokens  INTEGER[] NOT NULL,
    record         JSONB,
    -- the record's canonical JSON (sorted keys, no whitespace) exactly as hashed: JSONB re-renders numbers
    -- (and -0.0), so the hash is over this text, and readers parse it rather than `record`
    record_canonical TEXT,
    -- SHA-256 of record_canonical
    record_hash    eth_hash,
    no_attribution BIGINT CHECK (no_attribution BETWEEN 0 AND 1000000),
    error          TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'complete') = (no_attribution IS NOT NULL)),
    CHECK ((status = 'flagged') = (error IS NOT NULL)),
    CHECK ((record IS NULL) = (record_canonical IS NULL)),
    CHECK ((record IS NULL) = (record_hash IS NULL))
);
CREATE INDEX attributions_open ON attributions (created_at) WHERE status <> 'complete';
CREATE INDEX attributions_job ON attributions (job_id, created_at);

CREATE TABLE attribution_weights (
    inference_id    TEXT NOT NULL REFERENCES attributions (inference_id) ON DELETE CASCADE,
    source          INTEGER NOT NULL,
    datanet_id      NUMERIC(78, 0) NOT NULL,
    contribution_id NUMERIC(78, 0) NOT NULL,
    contributor     eth_address NOT NULL,
    weight          BIGINT NOT NULL CHECK (weight > 0 AND weight <= 1000000),
    PRIMARY KEY (inference_id, source)
);
CREATE INDEX attribution_weights_contributor ON attribution_weights (contributor);
