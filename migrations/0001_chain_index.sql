-- The chain index: every event of the OpenLedger contracts, exactly as the canonical chain holds them.
--
-- `chain_events` holds each decoded event once (its arguments as JSON, named as in the ABI). The typed
-- tables below are filled from it by a statement-level trigger in the same transaction; every row carries
-- its event's key and block, and `rollback_chain_index` removes everything above a block (a reorg) from all
-- of them at once. (No foreign keys to chain_events: their per-row checks cost a third of the insert time.)
-- Current state (a contribution's acceptance, a Datanet's owner, a stake position, ...) is derived by the
-- *_current views, so there is no mutable state to roll back.
--
-- Fixed forms: addresses and hashes are lowercase 0x-hex text with byte-wise ("C") collation, so indexes on
-- them compare bytes, not locale rules; every uint256 is NUMERIC(78,0). The domains
-- below check them where they enter (chain_events). The typed tables take their values from chain_events'
-- arguments, written in those forms by the indexer's decoder, so they use the plain types: checking every
-- column again cost half of the write time.

CREATE DOMAIN eth_address AS TEXT COLLATE "C" CHECK (VALUE ~ '^0x[0-9a-f]{40}$');
CREATE DOMAIN eth_hash AS TEXT COLLATE "C" CHECK (VALUE ~ '^0x[0-9a-f]{64}$');
CREATE DOMAIN uint256 AS NUMERIC(78, 0)
    CHECK (VALUE >= 0 AND VALUE <= 115792089237316195423570985008687907853269984665640564039457584007913129639935);

-- ---------------------------------------------------------------- indexer bookkeeping

-- One row per chain and contract set (deployment_key = the OPEN token's address).
CREATE TABLE indexer_checkpoints (
    chain_id        BIGINT NOT NULL,
    deployment_key  eth_address NOT NULL,
    -- every block <= indexed_through is indexed (start_block - 1 before the first range)
    indexed_through BIGINT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, deployment_key)
);

-- Hashes of indexed blocks inside the reorg window, to find the common ancestor after a reorg.
CREATE TABLE indexer_blocks (
    chain_id       BIGINT NOT NULL,
    deployment_key eth_address NOT NULL,
    block_number   BIGINT NOT NULL,
    block_hash     eth_hash NOT NULL,
    PRIMARY KEY (chain_id, deployment_key, block_number)
);

-- ---------------------------------------------------------------- the raw, decoded record

CREATE TABLE chain_events (
    chain_id     BIGINT NOT NULL,
    tx_hash      eth_hash NOT NULL,
    log_index    BIGINT NOT NULL,
    block_number BIGINT NOT NULL,
    block_hash   eth_hash NOT NULL,
    tx_index     BIGINT NOT NULL,
    address      eth_address NOT NULL,
    contract     TEXT NOT NULL,
    event        TEXT NOT NULL,
    args         JSONB NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
-- Lean on purpose: every index here is paid on each of the (many) inserts. Queries by kind go to the typed
-- tables; rollbacks and block lookups use the BRIN index.
CREATE INDEX chain_events_block ON chain_events USING brin (block_number);

-- Every typed table starts with the same columns: (chain_id, tx_hash, log_index) is the event's key.

-- ---------------------------------------------------------------- Registry

CREATE TABLE datanets (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    datanet_id    NUMERIC(78, 0) NOT NULL,
    owner         TEXT COLLATE "C" NOT NULL,
    metadata_uri  TEXT NOT NULL,
    tags          TEXT[] NOT NULL,
    permissioned  BOOLEAN NOT NULL,
    curators      TEXT[] NOT NULL,
    fee_paid      NUMERIC(78, 0) NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE UNIQUE INDEX datanets_id ON datanets (chain_id, contract_address, datanet_id);
CREATE INDEX datanets_owner ON datanets (owner);

-- Metadata updates, ownership transfers, curator and contributor-allowlist changes.
CREATE TABLE datanet_changes (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    datanet_id   NUMERIC(78, 0) NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('metadata', 'owner', 'curator', 'contributor_allowed')),
    account      TEXT COLLATE "C",   -- new owner, curator or contributor
    enabled      BOOLEAN,       -- curator / contributor_allowed
    metadata_uri TEXT,          -- metadata
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX datanet_changes_id ON datanet_changes (chain_id, contract_address, datanet_id, block_number);

CREATE TABLE contributions (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    contribution_id NUMERIC(78, 0) NOT NULL,
    datanet_id      NUMERIC(78, 0) NOT NULL,
    contributor     TEXT COLLATE "C" NOT NULL,
    content_hash    TEXT COLLATE "C" NOT NULL,
    metadata_uri    TEXT NOT NULL,
    submitter       TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE UNIQUE INDEX contributions_id ON contributions (chain_id, contract_address, contribution_id);
CREATE INDEX contributions_datanet ON contributions (chain_id, contract_address, datanet_id, contribution_id);
CREATE INDEX contributions_contributor ON contributions (contributor);
CREATE INDEX contributions_content ON contributions (content_hash);

CREATE TABLE contribution_reviews (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    contribution_id NUMERIC(78, 0) NOT NULL,
    datanet_id      NUMERIC(78, 0) NOT NULL,
    curator         TEXT COLLATE "C" NOT NULL,
    accepted        BOOLEAN NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
-- a contribution is reviewed at most once on-chain
CREATE UNIQUE INDEX contribution_reviews_id ON contribution_reviews (chain_id, contract_address, contribution_id);

CREATE TABLE datanet_versions (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    datanet_id         NUMERIC(78, 0) NOT NULL,
    version            NUMERIC(78, 0) NOT NULL,
    root               TEXT COLLATE "C" NOT NULL,
    contribution_count NUMERIC(78, 0) NOT NULL,
    uri                TEXT NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE UNIQUE INDEX datanet_versions_id ON datanet_versions (chain_id, contract_address, datanet_id, version);

CREATE TABLE models (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    model_id             NUMERIC(78, 0) NOT NULL,
    developer            TEXT COLLATE "C" NOT NULL,
    base_model           TEXT NOT NULL,
    base_model_hash      TEXT COLLATE "C" NOT NULL,
    datanet_ids          NUMERIC(78, 0)[] NOT NULL,
    datanet_versions     NUMERIC(78, 0)[] NOT NULL,
    datanet_roots        TEXT[] NOT NULL,
    training_config_hash TEXT COLLATE "C" NOT NULL,
    metadata_uri         TEXT NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE UNIQUE INDEX models_id ON models (chain_id, contract_address, model_id);
CREATE INDEX models_developer ON models (developer);

CREATE TABLE model_transfers (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    model_id           NUMERIC(78, 0) NOT NULL,
    previous_developer TEXT COLLATE "C" NOT NULL,
    new_developer      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX model_transfers_id ON model_transfers (chain_id, contract_address, model_id, block_number);

CREATE TABLE adapters (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    adapter_id   NUMERIC(78, 0) NOT NULL,
    model_id     NUMERIC(78, 0) NOT NULL,
    version      NUMERIC(78, 0) NOT NULL,
    content_hash TEXT COLLATE "C" NOT NULL,
    uri          TEXT NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE UNIQUE INDEX adapters_id ON adapters (chain_id, contract_address, adapter_id);
CREATE INDEX adapters_model ON adapters (chain_id, contract_address, model_id, version);

CREATE TABLE agents (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    agent_id     NUMERIC(78, 0) NOT NULL,
    model_id     NUMERIC(78, 0) NOT NULL,
    owner        TEXT COLLATE "C" NOT NULL,
    operator     TEXT COLLATE "C" NOT NULL,
    metadata_uri TEXT NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE UNIQUE INDEX agents_id ON agents (chain_id, contract_address, agent_id);

CREATE TABLE agent_operator_changes (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    agent_id          NUMERIC(78, 0) NOT NULL,
    previous_operator TEXT COLLATE "C" NOT NULL,
    new_operator      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX agent_operator_changes_id ON agent_operator_changes (chain_id, contract_address, agent_id, block_number);

-- ---------------------------------------------------------------- Staking

CREATE TABLE stakes (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    agent_id   NUMERIC(78, 0) NOT NULL,
    staker     TEXT COLLATE "C" NOT NULL,
    amount     NUMERIC(78, 0) NOT NULL,
    new_staked NUMERIC(78, 0) NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX stakes_position ON stakes (chain_id, contract_address, agent_id, staker);

CREATE TABLE unbondings (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    agent_id      NUMERIC(78, 0) NOT NULL,
    staker        TEXT COLLATE "C" NOT NULL,
    amount        NUMERIC(78, 0) NOT NULL,
    new_unbonding NUMERIC(78, 0) NOT NULL,
    release_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX unbondings_position ON unbondings (chain_id, contract_address, agent_id, staker);

CREATE TABLE stake_withdrawals (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    agent_id NUMERIC(78, 0) NOT NULL,
    staker   TEXT COLLATE "C" NOT NULL,
    amount   NUMERIC(78, 0) NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX stake_withdrawals_position ON stake_withdrawals (chain_id, contract_address, agent_id, staker);

CREATE TABLE slashes (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    agent_id       NUMERIC(78, 0) NOT NULL,
    staker         TEXT COLLATE "C" NOT NULL,
    incident_id    TEXT COLLATE "C" NOT NULL,
    from_staked    NUMERIC(78, 0) NOT NULL,
    from_unbonding NUMERIC(78, 0) NOT NULL,
    burned         BOOLEAN NOT NULL,
    slasher        TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX slashes_position ON slashes (chain_id, contract_address, agent_id, staker);

-- ---------------------------------------------------------------- FeeRouter

CREATE TABLE inference_payments (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    payer            TEXT COLLATE "C" NOT NULL,
    model_id         NUMERIC(78, 0) NOT NULL,
    request_id       TEXT COLLATE "C" NOT NULL,
    amount           NUMERIC(78, 0) NOT NULL,
    developer        TEXT COLLATE "C" NOT NULL,
    burned           NUMERIC(78, 0) NOT NULL,
    developer_amount NUMERIC(78, 0) NOT NULL,
    treasury_amount  NUMERIC(78, 0) NOT NULL,
    pool_amount      NUMERIC(78, 0) NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE UNIQUE INDEX inference_payments_request ON inference_payments (chain_id, contract_address, payer, request_id);
CREATE INDEX inference_payments_model ON inference_payments (chain_id, contract_address, model_id, block_number);

-- ---------------------------------------------------------------- RewardDistributor

CREATE TABLE reward_roots (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    epoch    NUMERIC(78, 0) NOT NULL,
    root     TEXT COLLATE "C" NOT NULL,
    total    NUMERIC(78, 0) NOT NULL,
    valid_at TIMESTAMPTZ NOT NULL,
    uri      TEXT NOT NULL,
    settler  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE UNIQUE INDEX reward_roots_epoch ON reward_roots (chain_id, contract_address, epoch);

-- What became of a proposed root: accepted, revoked, or superseded by a later epoch.
CREATE TABLE reward_root_outcomes (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    epoch    NUMERIC(78, 0) NOT NULL,
    root     TEXT COLLATE "C" NOT NULL,
    outcome  TEXT NOT NULL CHECK (outcome IN ('accepted', 'revoked', 'superseded')),
    by_epoch NUMERIC(78, 0),      -- superseded
    actor    TEXT COLLATE "C",  -- revoked
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE UNIQUE INDEX reward_root_outcomes_epoch ON reward_root_outcomes (chain_id, contract_address, epoch);

CREATE TABLE reward_claims (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    account           TEXT COLLATE "C" NOT NULL,
    epoch             NUMERIC(78, 0) NOT NULL,
    cumulative_amount NUMERIC(78, 0) NOT NULL,
    amount            NUMERIC(78, 0) NOT NULL,
    caller            TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX reward_claims_account ON reward_claims (account, block_number);

-- ---------------------------------------------------------------- OpenToken

CREATE TABLE token_transfers (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    from_address TEXT COLLATE "C" NOT NULL,
    to_address   TEXT COLLATE "C" NOT NULL,
    value        NUMERIC(78, 0) NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX token_transfers_from ON token_transfers (from_address, block_number);
CREATE INDEX token_transfers_to ON token_transfers (to_address, block_number);

CREATE TABLE token_allocations (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    recipient TEXT COLLATE "C" NOT NULL,
    amount    NUMERIC(78, 0) NOT NULL,
    label     TEXT NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);

-- ---------------------------------------------------------------- governance

-- Every parameter a contract exposes to governance (fees, split, treasury, pool, delays, slash settings,
-- governor settings, timelock delay) and every role grant or revocation: `params` holds the event's
-- arguments by name.
CREATE TABLE parameter_changes (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    contract  TEXT NOT NULL,
    parameter TEXT NOT NULL,
    params    JSONB NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX parameter_changes_kind ON parameter_changes (contract, parameter, block_number);

CREATE TABLE governance_proposals (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    proposal_id NUMERIC(78, 0) NOT NULL,
    proposer    TEXT COLLATE "C" NOT NULL,
    targets     TEXT[] NOT NULL,
    vote_start  NUMERIC(78, 0) NOT NULL,
    vote_end    NUMERIC(78, 0) NOT NULL,
    description TEXT NOT NULL,
    calls       JSONB NOT NULL, -- values, signatures, calldatas
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE UNIQUE INDEX governance_proposals_id ON governance_proposals (chain_id, contract_address, proposal_id);

CREATE TABLE governance_votes (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    proposal_id NUMERIC(78, 0) NOT NULL,
    voter       TEXT COLLATE "C" NOT NULL,
    support     SMALLINT NOT NULL,
    weight      NUMERIC(78, 0) NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX governance_votes_proposal ON governance_votes (chain_id, contract_address, proposal_id);

CREATE TABLE governance_proposal_outcomes (
    chain_id BIGINT NOT NULL, tx_hash TEXT NOT NULL, log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL, block_hash TEXT NOT NULL, contract_address TEXT NOT NULL,
    proposal_id NUMERIC(78, 0) NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('queued', 'executed', 'canceled')),
    eta         NUMERIC(78, 0),
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX governance_proposal_outcomes_id ON governance_proposal_outcomes (chain_id, contract_address, proposal_id);

-- ---------------------------------------------------------------- routing chain_events -> typed tables

CREATE FUNCTION route_chain_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO datanets
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'datanetId')::numeric, n.args->>'owner', n.args->>'metadataURI',
           ARRAY(SELECT jsonb_array_elements_text(n.args->'tags')), (n.args->>'permissioned')::boolean,
           ARRAY(SELECT jsonb_array_elements_text(n.args->'curators')), (n.args->>'feePaid')::numeric
    FROM new_events n WHERE n.contract = 'Registry' AND n.event = 'DatanetCreated';

    INSERT INTO datanet_changes
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'datanetId')::numeric,
           CASE n.event WHEN 'DatanetMetadataUpdated' THEN 'metadata'
                        WHEN 'DatanetOwnershipTransferred' THEN 'owner'
                        WHEN 'CuratorSet' THEN 'curator'
                        ELSE 'contributor_allowed' END,
           COALESCE(n.args->>'newOwner', n.args->>'curator', n.args->>'contributor'),
           COALESCE((n.args->>'enabled')::boolean, (n.args->>'allowed')::boolean),
           n.args->>'metadataURI'
    FROM new_events n WHERE n.contract = 'Registry'
      AND n.event IN ('DatanetMetadataUpdated', 'DatanetOwnershipTransferred', 'CuratorSet', 'ContributorAllowed');

    INSERT INTO contributions
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'contributionId')::numeric, (n.args->>'datanetId')::numeric, n.args->>'contributor',
           n.args->>'contentHash', n.args->>'metadataURI', n.args->>'submitter'
    FROM new_events n WHERE n.contract = 'Registry' AND n.event = 'ContributionSubmitted';

    INSERT INTO contribution_reviews
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'contributionId')::numeric, (n.args->>'datanetId')::numeric, n.args->>'curator',
           (n.args->>'accepted')::boolean
    FROM new_events n WHERE n.contract = 'Registry' AND n.event = 'ContributionReviewed';

    INSERT INTO datanet_versions
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'datanetId')::numeric, (n.args->>'version')::numeric, n.args->>'root',
           (n.args->>'contributionCount')::numeric, n.args->>'uri'
    FROM new_events n WHERE n.contract = 'Registry' AND n.event = 'DatanetVersionPublished';

    INSERT INTO models
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'modelId')::numeric, n.args->>'developer', n.args->>'baseModel', n.args->>'baseModelHash',
           ARRAY(SELECT x::numeric FROM jsonb_array_elements_text(n.args->'datanetIds') x),
           ARRAY(SELECT x::numeric FROM jsonb_array_elements_text(n.args->'datanetVersions') x),
           ARRAY(SELECT jsonb_array_elements_text(n.args->'datanetRoots')),
           n.args->>'trainingConfigHash', n.args->>'metadataURI'
    FROM new_events n WHERE n.contract = 'Registry' AND n.event = 'ModelRegistered';

    INSERT INTO model_transfers
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'modelId')::numeric, n.args->>'previousDeveloper', n.args->>'newDeveloper'
    FROM new_events n WHERE n.contract = 'Registry' AND n.event = 'ModelDeveloperTransferred';

    INSERT INTO adapters
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'adapterId')::numeric, (n.args->>'modelId')::numeric, (n.args->>'version')::numeric,
           n.args->>'contentHash', n.args->>'uri'
    FROM new_events n WHERE n.contract = 'Registry' AND n.event = 'AdapterPublished';

    INSERT INTO agents
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'agentId')::numeric, (n.args->>'modelId')::numeric, n.args->>'owner', n.args->>'operator',
           n.args->>'metadataURI'
    FROM new_events n WHERE n.contract = 'Registry' AND n.event = 'AgentRegistered';

    INSERT INTO agent_operator_changes
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'agentId')::numeric, n.args->>'previousOperator', n.args->>'newOperator'
    FROM new_events n WHERE n.contract = 'Registry' AND n.event = 'AgentOperatorChanged';

    INSERT INTO stakes
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'agentId')::numeric, n.args->>'staker', (n.args->>'amount')::numeric,
           (n.args->>'newStaked')::numeric
    FROM new_events n WHERE n.contract = 'Staking' AND n.event = 'Staked';

    INSERT INTO unbondings
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'agentId')::numeric, n.args->>'staker', (n.args->>'amount')::numeric,
           (n.args->>'newUnbonding')::numeric, to_timestamp((n.args->>'releaseAt')::numeric)
    FROM new_events n WHERE n.contract = 'Staking' AND n.event = 'UnstakeRequested';

    INSERT INTO stake_withdrawals
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'agentId')::numeric, n.args->>'staker', (n.args->>'amount')::numeric
    FROM new_events n WHERE n.contract = 'Staking' AND n.event = 'Withdrawn';

    INSERT INTO slashes
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'agentId')::numeric, n.args->>'staker', n.args->>'incidentId',
           (n.args->>'fromStaked')::numeric, (n.args->>'fromUnbonding')::numeric, (n.args->>'burned')::boolean,
           n.args->>'slasher'
    FROM new_events n WHERE n.contract = 'Staking' AND n.event = 'Slashed';

    INSERT INTO inference_payments
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           n.args->>'payer', (n.args->>'modelId')::numeric, n.args->>'requestId', (n.args->>'amount')::numeric,
           n.args->>'developer', (n.args->>'burned')::numeric, (n.args->>'developerAmount')::numeric,
           (n.args->>'treasuryAmount')::numeric, (n.args->>'poolAmount')::numeric
    FROM new_events n WHERE n.contract = 'FeeRouter' AND n.event = 'InferencePaid';

    INSERT INTO reward_roots
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'epoch')::numeric, n.args->>'root', (n.args->>'total')::numeric,
           to_timestamp((n.args->>'validAt')::numeric), n.args->>'uri', n.args->>'settler'
    FROM new_events n WHERE n.contract = 'RewardDistributor' AND n.event = 'RootProposed';

    INSERT INTO reward_root_outcomes
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'epoch')::numeric, n.args->>'root',
           CASE n.event WHEN 'RootAccepted' THEN 'accepted' WHEN 'RootRevoked' THEN 'revoked' ELSE 'superseded' END,
           (n.args->>'byEpoch')::numeric, n.args->>'revoker'
    FROM new_events n WHERE n.contract = 'RewardDistributor'
      AND n.event IN ('RootAccepted', 'RootRevoked', 'RootSuperseded');

    INSERT INTO reward_claims
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           n.args->>'account', (n.args->>'epoch')::numeric, (n.args->>'cumulativeAmount')::numeric,
           (n.args->>'amount')::numeric, n.args->>'caller'
    FROM new_events n WHERE n.contract = 'RewardDistributor' AND n.event = 'Claimed';

    INSERT INTO token_transfers
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           n.args->>'from', n.args->>'to', (n.args->>'value')::numeric
    FROM new_events n WHERE n.contract = 'OpenToken' AND n.event = 'Transfer';

    INSERT INTO token_allocations
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           n.args->>'recipient', (n.args->>'amount')::numeric, n.args->>'label'
    FROM new_events n WHERE n.contract = 'OpenToken' AND n.event = 'Allocated';

    INSERT INTO parameter_changes
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           n.contract, n.event, n.args
    FROM new_events n WHERE n.event IN (
        'DatanetFeeSet', 'TreasurySet', 'PoolSet', 'SplitSet', 'UnbondingPeriodSet', 'MaxSlashBpsSet',
        'SlashDestinationSet', 'ChallengeDelaySet', 'VotingDelaySet', 'VotingPeriodSet',
        'ProposalThresholdSet', 'QuorumNumeratorUpdated', 'TimelockChange', 'MinDelayChange',
        'RoleGranted', 'RoleRevoked', 'RoleAdminChanged');

    INSERT INTO governance_proposals
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'proposalId')::numeric, n.args->>'proposer',
           ARRAY(SELECT jsonb_array_elements_text(n.args->'targets')),
           (n.args->>'voteStart')::numeric, (n.args->>'voteEnd')::numeric, n.args->>'description',
           jsonb_build_object('values', n.args->'values', 'signatures', n.args->'signatures',
                              'calldatas', n.args->'calldatas')
    FROM new_events n WHERE n.contract = 'OpenGovernor' AND n.event = 'ProposalCreated';

    INSERT INTO governance_votes
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'proposalId')::numeric, n.args->>'voter', (n.args->>'support')::smallint,
           (n.args->>'weight')::numeric, n.args->>'reason'
    FROM new_events n WHERE n.contract = 'OpenGovernor' AND n.event IN ('VoteCast', 'VoteCastWithParams');

    INSERT INTO governance_proposal_outcomes
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address,
           (n.args->>'proposalId')::numeric,
           CASE n.event WHEN 'ProposalQueued' THEN 'queued' WHEN 'ProposalExecuted' THEN 'executed' ELSE 'canceled' END,
           (n.args->>'etaSeconds')::numeric
    FROM new_events n WHERE n.contract = 'OpenGovernor'
      AND n.event IN ('ProposalQueued', 'ProposalExecuted', 'ProposalCanceled');

    RETURN NULL;
END $$;

CREATE TRIGGER route_chain_events AFTER INSERT ON chain_events
    REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION route_chain_events();

-- ---------------------------------------------------------------- reorgs

-- BRIN indexes: nearly free to maintain on append-mostly block numbers, and they keep rollbacks cheap.
CREATE INDEX datanets_block ON datanets USING brin (block_number);
CREATE INDEX datanet_changes_block ON datanet_changes USING brin (block_number);
CREATE INDEX contributions_block ON contributions USING brin (block_number);
CREATE INDEX contribution_reviews_block ON contribution_reviews USING brin (block_number);
CREATE INDEX datanet_versions_block ON datanet_versions USING brin (block_number);
CREATE INDEX models_block ON models USING brin (block_number);
CREATE INDEX model_transfers_block ON model_transfers USING brin (block_number);
CREATE INDEX adapters_block ON adapters USING brin (block_number);
CREATE INDEX agents_block ON agents USING brin (block_number);
CREATE INDEX agent_operator_changes_block ON agent_operator_changes USING brin (block_number);
CREATE INDEX stakes_block ON stakes USING brin (block_number);
CREATE INDEX unbondings_block ON unbondings USING brin (block_number);
CREATE INDEX stake_withdrawals_block ON stake_withdrawals USING brin (block_number);
CREATE INDEX slashes_block ON slashes USING brin (block_number);
CREATE INDEX inference_payments_block ON inference_payments USING brin (block_number);
CREATE INDEX reward_roots_block ON reward_roots USING brin (block_number);
CREATE INDEX reward_root_outcomes_block ON reward_root_outcomes USING brin (block_number);
CREATE INDEX reward_claims_block ON reward_claims USING brin (block_number);
CREATE INDEX token_transfers_block ON token_transfers USING brin (block_number);
CREATE INDEX token_allocations_block ON token_allocations USING brin (block_number);
CREATE INDEX parameter_changes_block ON parameter_changes USING brin (block_number);
CREATE INDEX governance_proposals_block ON governance_proposals USING brin (block_number);
CREATE INDEX governance_votes_block ON governance_votes USING brin (block_number);
CREATE INDEX governance_proposal_outcomes_block ON governance_proposal_outcomes USING brin (block_number);

-- Remove every row of the given contracts above `above` (the common ancestor of a reorg).
CREATE FUNCTION rollback_chain_index(p_chain BIGINT, p_above BIGINT, p_addresses TEXT[]) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    t TEXT;
    deleted BIGINT;
BEGIN
    FOREACH t IN ARRAY ARRAY['datanets', 'datanet_changes', 'contributions', 'contribution_reviews', 'datanet_versions', 'models', 'model_transfers', 'adapters', 'agents', 'agent_operator_changes', 'stakes', 'unbondings', 'stake_withdrawals', 'slashes', 'inference_payments', 'reward_roots', 'reward_root_outcomes', 'reward_claims', 'token_transfers', 'token_allocations', 'parameter_changes', 'governance_proposals', 'governance_votes', 'governance_proposal_outcomes']
    LOOP
        EXECUTE format('DELETE FROM %I WHERE chain_id = $1 AND block_number > $2 AND contract_address = ANY($3)', t)
            USING p_chain, p_above, p_addresses;
    END LOOP;
    DELETE FROM chain_events WHERE chain_id = p_chain AND block_number > p_above AND address = ANY(p_addresses);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END $$;

-- ---------------------------------------------------------------- current state

CREATE VIEW contributions_current AS
SELECT c.chain_id, c.contract_address, c.contribution_id, c.datanet_id, c.contributor, c.content_hash,
       c.metadata_uri, c.submitter, c.block_number, c.tx_hash,
       CASE WHEN r.accepted IS NULL THEN 'pending' WHEN r.accepted THEN 'accepted' ELSE 'rejected' END AS status,
       r.curator AS reviewed_by, r.block_number AS reviewed_block
FROM contributions c
LEFT JOIN contribution_reviews r
       ON r.chain_id = c.chain_id AND r.contract_address = c.contract_address
      AND r.contribution_id = c.contribution_id;

CREATE VIEW datanets_current AS
SELECT d.chain_id, d.contract_address, d.datanet_id, d.permissioned, d.tags, d.fee_paid,
       d.block_number AS created_block, d.tx_hash,
       COALESCE((SELECT x.account FROM datanet_changes x
                 WHERE x.chain_id = d.chain_id AND x.contract_address = d.contract_address
                   AND x.datanet_id = d.datanet_id AND x.kind = 'owner'
                 ORDER BY x.block_number DESC, x.log_index DESC LIMIT 1), d.owner) AS owner,
       COALESCE((SELECT x.metadata_uri FROM datanet_changes x
                 WHERE x.chain_id = d.chain_id AND x.contract_address = d.contract_address
                   AND x.datanet_id = d.datanet_id AND x.kind = 'metadata'
                 ORDER BY x.block_number DESC, x.log_index DESC LIMIT 1), d.metadata_uri) AS metadata_uri,
       (SELECT count(*) FROM contributions c
         WHERE c.chain_id = d.chain_id AND c.contract_address = d.contract_address
           AND c.datanet_id = d.datanet_id) AS contribution_count,
       (SELECT count(*) FROM contribution_reviews r
         WHERE r.chain_id = d.chain_id AND r.contract_address = d.contract_address
           AND r.datanet_id = d.datanet_id AND r.accepted) AS accepted_count,
       (SELECT max(v.version) FROM datanet_versions v
         WHERE v.chain_id = d.chain_id AND v.contract_address = d.contract_address
           AND v.datanet_id = d.datanet_id) AS latest_version
FROM datanets d;

CREATE VIEW models_current AS
SELECT m.chain_id, m.contract_address, m.model_id, m.base_model, m.base_model_hash, m.datanet_ids,
       m.datanet_versions, m.datanet_roots, m.training_config_hash, m.metadata_uri,
       m.block_number AS registered_block, m.tx_hash,
       COALESCE((SELECT t.new_developer FROM model_transfers t
                 WHERE t.chain_id = m.chain_id AND t.contract_address = m.contract_address
                   AND t.model_id = m.model_id
                 ORDER BY t.block_number DESC, t.log_index DESC LIMIT 1), m.developer) AS developer
FROM models m;

CREATE VIEW agents_current AS
SELECT a.chain_id, a.contract_address, a.agent_id, a.model_id, a.owner, a.metadata_uri,
       a.block_number AS registered_block,
       COALESCE((SELECT o.new_operator FROM agent_operator_changes o
                 WHERE o.chain_id = a.chain_id AND o.contract_address = a.contract_address
                   AND o.agent_id = a.agent_id
                 ORDER BY o.block_number DESC, o.log_index DESC LIMIT 1), a.operator) AS operator
FROM agents a;

-- staked = staked in - moved to unbonding - slashed from stake;
-- unbonding = moved to unbonding - withdrawn - slashed from unbonding
CREATE VIEW stake_positions AS
WITH moves AS (
    SELECT chain_id, contract_address, agent_id, staker, amount AS staked, 0::numeric AS unbonding FROM stakes
    UNION ALL
    SELECT chain_id, contract_address, agent_id, staker, -amount, amount FROM unbondings
    UNION ALL
    SELECT chain_id, contract_address, agent_id, staker, 0, -amount FROM stake_withdrawals
    UNION ALL
    SELECT chain_id, contract_address, agent_id, staker, -from_staked, -from_unbonding FROM slashes
)
SELECT chain_id, contract_address, agent_id, staker,
       sum(staked)::numeric(78, 0) AS staked, sum(unbonding)::numeric(78, 0) AS unbonding
FROM moves GROUP BY chain_id, contract_address, agent_id, staker;

CREATE VIEW reward_epochs AS
SELECT r.chain_id, r.contract_address, r.epoch, r.root, r.total, r.valid_at, r.uri, r.settler,
       r.block_number AS proposed_block,
       COALESCE(o.outcome, 'pending') AS status, o.block_number AS decided_block
FROM reward_roots r
LEFT JOIN reward_root_outcomes o
       ON o.chain_id = r.chain_id AND o.contract_address = r.contract_address AND o.epoch = r.epoch;
