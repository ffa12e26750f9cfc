-- Batch inference (OpenAI's Batch API): uploaded files, and one result per line of a batch job.

-- Files uploaded for batches (purpose 'batch') and the files a batch writes (purpose 'batch_output').
CREATE TABLE files (
    id         TEXT PRIMARY KEY,
    owner      eth_address NOT NULL,
    purpose    TEXT NOT NULL CHECK (purpose IN ('batch', 'batch_output')),
    filename   TEXT NOT NULL,
    bytes      BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX files_owner ON files (owner, created_at DESC);

-- A line's outcome, written once when it ends; a resumed job skips the lines found here.
CREATE TABLE batch_results (
    job_id       BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    line         INTEGER NOT NULL CHECK (line >= 0),
    custom_id    TEXT NOT NULL,
    status_code  INTEGER NOT NULL,
    inference_id TEXT REFERENCES inferences (id),
    body         JSONB NOT NULL,
    finished_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, line)
);

ALTER TABLE inferences ADD COLUMN batch_line INTEGER;
ALTER TABLE inferences ADD CONSTRAINT inferences_batch_line CHECK (batch_job_id IS NULL OR batch_line IS NOT NULL);
CREATE INDEX inferences_batch ON inferences (batch_job_id, batch_line) WHERE batch_job_id IS NOT NULL;
