-- What the daemon's key paid FeeRouter on callers' behalf (`--sponsor-inference`), for the spend caps: per
-- caller (NULL: anonymous callers, one bucket) and in total, per period.
CREATE TABLE sponsored_spend (
    id      BIGSERIAL PRIMARY KEY,
    caller  eth_address,
    amount  NUMERIC(78, 0) NOT NULL CHECK (amount > 0),
    tx_hash eth_hash NOT NULL,
    at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sponsored_spend_at ON sponsored_spend (at);
CREATE INDEX sponsored_spend_caller ON sponsored_spend (caller, at);
