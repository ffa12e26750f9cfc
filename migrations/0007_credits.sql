-- Inference credit: OPEN wei an operator grants an address. Sponsored inferences of a signed-in caller draw
-- on it when the daemon does not sponsor every caller. A balance changes only together with a ledger row.
CREATE TABLE inference_credits (
    address    eth_address PRIMARY KEY,
    balance    NUMERIC(78, 0) NOT NULL CHECK (balance >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE credit_ledger (
    id           BIGSERIAL PRIMARY KEY,
    address      eth_address NOT NULL,
    -- grant and refund add, inference and revoke take away
    delta        NUMERIC(78, 0) NOT NULL CHECK (delta <> 0),
    reason       TEXT NOT NULL CHECK (reason IN ('grant', 'revoke', 'inference', 'refund')),
    inference_id TEXT,
    note         TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((reason IN ('inference', 'refund')) = (inference_id IS NOT NULL)),
    CHECK ((reason IN ('grant', 'refund')) = (delta > 0))
);
CREATE INDEX credit_ledger_address ON credit_ledger (address, id);
-- an inference is charged once and refunded at most once
CREATE UNIQUE INDEX credit_ledger_once ON credit_ledger (inference_id, reason) WHERE inference_id IS NOT NULL;
