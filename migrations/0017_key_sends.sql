-- Every transaction the daemon's key sends for relays, sponsored payments and publishing, stored before it is
-- broadcast (see daemon/src/chain.rs). The key's next nonce is taken from here together with the node's pending
-- count, under one lock per key that every process sharing the database takes, so several `serve` processes
-- never take one nonce twice. A transaction without a receipt for `--bump-after-secs` is signed again at its
-- nonce with higher fees (a new row), until one attempt at the nonce is mined.
--   sent:     may still be mined (every attempt at a nonce stays live until the nonce is used)
--   mined:    this attempt is the one in the chain
--   replaced: another attempt at its nonce was mined
--   dropped:  the nonce went to a transaction that is not one of these attempts
CREATE TABLE key_sends (
    id           BIGSERIAL PRIMARY KEY,
    chain_id     BIGINT NOT NULL,
    sender       eth_address NOT NULL,
    nonce        BIGINT NOT NULL CHECK (nonce >= 0),
    what         TEXT NOT NULL,
    -- what the transaction is for, where the sender names it (a sponsored payment's request id)
    reference    TEXT,
    tx_hash      eth_hash NOT NULL UNIQUE,
    raw          BYTEA NOT NULL,
    max_fee      NUMERIC(78, 0) NOT NULL,
    priority_fee NUMERIC(78, 0) NOT NULL,
    state        TEXT NOT NULL DEFAULT 'sent' CHECK (state IN ('sent', 'mined', 'replaced', 'dropped')),
    sent_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- when the nonce was first seen used with no receipt for this attempt: it is `dropped` only once that has
    -- lasted (a node may count a mined transaction before it serves its receipt)
    unreceipted_since TIMESTAMPTZ,
    settled_at   TIMESTAMPTZ
);
CREATE INDEX key_sends_live ON key_sends (chain_id, sender, nonce) WHERE state = 'sent';
CREATE INDEX key_sends_reference ON key_sends (reference) WHERE reference IS NOT NULL;

-- Every payment the daemon's key makes to FeeRouter on a caller's behalf (sponsored, or against the caller's
-- inference credit), recorded before it is sent under the request id it pays. A payment whose receipt did not
-- come in time stays `sending` (the caller's credit is neither refunded nor charged again) until the index has
-- it (`paid`: the caller's next request to the model uses it instead of paying twice) or its nonce went to
-- another transaction (`failed`: the credit is refunded, the sponsorship cap freed).
CREATE TABLE daemon_payments (
    request_id        eth_hash PRIMARY KEY,
    caller            eth_address,
    model_id          NUMERIC(78, 0) NOT NULL,
    amount            NUMERIC(78, 0) NOT NULL CHECK (amount > 0),
    funding           TEXT NOT NULL CHECK (funding IN ('sponsored', 'credit')),
    -- the request whose credit charge pays for it (funding = 'credit')
    charged_inference TEXT,
    -- the request that used it (set when it is used: at once, or by a later request of the caller)
    used_by           TEXT,
    used_at           TIMESTAMPTZ,
    state             TEXT NOT NULL DEFAULT 'sending' CHECK (state IN ('sending', 'paid', 'failed')),
    tx_hash           eth_hash,
    error             TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    settled_at        TIMESTAMPTZ,
    CHECK ((funding = 'credit') = (charged_inference IS NOT NULL))
);
CREATE INDEX daemon_payments_open ON daemon_payments (caller, model_id) WHERE used_by IS NULL AND state <> 'failed';
CREATE INDEX daemon_payments_sponsored ON daemon_payments (created_at) WHERE funding = 'sponsored';
CREATE INDEX daemon_payments_charged ON daemon_payments (charged_inference) WHERE charged_inference IS NOT NULL;
