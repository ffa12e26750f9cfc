-- Settlement: epochs of paid, attributed inferences turned into cumulative reward roots on the
-- RewardDistributor. One row per build of an epoch; a build whose proposal failed (or whose range was
-- re-derived after a reorg) is kept as `failed` for the record, without leaves or payments, and the
-- epoch is built again under the same number. `state` walks
--   built -> submitted -> confirmed (receipt) -> final (the indexer has RootProposed) -> accepted
-- and ends as accepted, superseded (a later epoch's root replaced it before acceptance: its amounts are in
-- that root, since leaves are cumulative), revoked (its payments are free for the next epoch) or failed.
CREATE TABLE settlement_epochs (
    id              BIGSERIAL PRIMARY KEY,
    chain_id        BIGINT NOT NULL,
    distributor     eth_address NOT NULL,
    epoch           BIGINT NOT NULL CHECK (epoch > 0),
    state           TEXT NOT NULL CHECK (state IN ('built', 'submitted', 'confirmed', 'final', 'accepted',
                                                   'superseded', 'revoked', 'failed')),
    -- the block range whose InferencePaid events were considered (with held payments of earlier epochs)
    from_block      BIGINT NOT NULL,
    to_block        BIGINT NOT NULL CHECK (to_block >= from_block - 1),
    -- the hash of to_block when built: a different hash later means a reorg, and the build is re-derived
    to_block_hash   eth_hash NOT NULL,
    -- the build whose cumulative leaves this one extends (NULL for the first)
    previous_id     BIGINT REFERENCES settlement_epochs (id),
    root            eth_hash NOT NULL,
    total           NUMERIC(78, 0) NOT NULL,
    -- this epoch: the included pools, and the protocol's part ("no attribution" + rounding dust)
    pool_amount     NUMERIC(78, 0) NOT NULL,
    protocol_amount NUMERIC(78, 0) NOT NULL,
    treasury        eth_address NOT NULL,
    accounts        INTEGER NOT NULL,
    included        INTEGER NOT NULL,
    held            INTEGER NOT NULL,
    -- the epoch's report (canonical JSON: inputs, per-account amounts, root) and its SHA-256; the
    -- proposal's uri names the hash
    report          TEXT NOT NULL,
    report_hash     eth_hash NOT NULL,
    uri             TEXT NOT NULL,
    error           TEXT,
    proposed_tx     eth_hash,
    proposed_block  BIGINT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((state = 'failed') = (error IS NOT NULL))
);
-- one live build per epoch number
CREATE UNIQUE INDEX settlement_epochs_live ON settlement_epochs (chain_id, distributor, epoch)
    WHERE state <> 'failed';

-- Every signed transaction of a build, bumps included, written before it is broadcast: after a crash the
-- same bytes are re-sent or found mined, so an epoch is never proposed twice.
CREATE TABLE settlement_txs (
    tx_hash         eth_hash PRIMARY KEY,
    epoch_id        BIGINT NOT NULL REFERENCES settlement_epochs (id),
    -- cancel: a self-transfer that takes a proposal's nonce when the epoch's range was reorganised
    kind            TEXT NOT NULL CHECK (kind IN ('propose', 'cancel')),
    nonce           BIGINT NOT NULL,
    raw             BYTEA NOT NULL,
    max_fee         NUMERIC(78, 0) NOT NULL,
    priority_fee    NUMERIC(78, 0) NOT NULL,
    -- sent: broadcast (or about to be); mined: its receipt is in; replaced: another of the same nonce was
    -- mined; dropped: its nonce went to a transaction that is not ours
    state           TEXT NOT NULL CHECK (state IN ('sent', 'mined', 'replaced', 'dropped', 'reverted')),
    block_number    BIGINT,
    sent_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX settlement_txs_epoch ON settlement_txs (epoch_id, sent_at);

-- Every leaf of a build with its proof (the 32-byte nodes, leaf to root, concatenated).
CREATE TABLE settlement_leaves (
    epoch_id   BIGINT NOT NULL REFERENCES settlement_epochs (id) ON DELETE CASCADE,
    account    eth_address NOT NULL,
    cumulative NUMERIC(78, 0) NOT NULL CHECK (cumulative > 0),
    amount     NUMERIC(78, 0) NOT NULL CHECK (amount >= 0),
    proof      BYTEA NOT NULL,
    PRIMARY KEY (epoch_id, account)
);
CREATE INDEX settlement_leaves_account ON settlement_leaves (account, epoch_id);

-- What a build did with each payment it considered: included (split into its leaves) or held (reason
-- says why; considered again by the next epoch). A payment is included by one live build only.
CREATE TABLE settlement_payments (
    epoch_id     BIGINT NOT NULL REFERENCES settlement_epochs (id) ON DELETE CASCADE,
    chain_id     BIGINT NOT NULL,
    tx_hash      TEXT COLLATE "C" NOT NULL,
    log_index    BIGINT NOT NULL,
    block_number BIGINT NOT NULL,
    pool_amount  NUMERIC(78, 0) NOT NULL,
    inference_id TEXT,
    record_hash  eth_hash,
    included     BOOLEAN NOT NULL,
    reason       TEXT,
    PRIMARY KEY (epoch_id, chain_id, tx_hash, log_index),
    CHECK (included = (reason IS NULL))
);
CREATE UNIQUE INDEX settlement_payments_once ON settlement_payments (chain_id, tx_hash, log_index)
    WHERE included;
