-- The terms of a pay-first payment: the payment is found by its request id whatever the payer (a client
-- that pays under keccak256(secret) names no payer), and it keeps the price that was in force at its block.

CREATE INDEX inference_payments_request_id ON inference_payments (chain_id, contract_address, request_id);

-- Every price a developer set, and the first block it applies to (the chain's head when it was set, plus
-- one): a payment mined in block b is held to the latest change with from_block <= b. `price_per_1k` NULL
-- is "back to the daemon's default". `model_prices` stays the current price.
CREATE TABLE model_price_changes (
    id           BIGSERIAL PRIMARY KEY,
    job_id       BIGINT NOT NULL REFERENCES trained_models (job_id) ON DELETE CASCADE,
    from_block   BIGINT NOT NULL CHECK (from_block >= 0),
    price_per_1k NUMERIC(78, 0) CHECK (price_per_1k > 0),
    set_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX model_price_changes_job ON model_price_changes (job_id, from_block DESC, id DESC);

-- prices set before this history existed applied to every payment
INSERT INTO model_price_changes (job_id, from_block, price_per_1k, set_at)
SELECT job_id, 0, price_per_1k, updated_at FROM model_prices;
