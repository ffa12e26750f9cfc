-- The RewardDistributor's dispute bond is a governance parameter, indexed like the challenge delay. (Disputes
-- themselves, RootDisputed and DisputeResolved, stay in chain_events; `openledger settle watch` reads the
-- chain.)
CREATE FUNCTION route_dispute_bond() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO parameter_changes
    SELECT n.chain_id, n.tx_hash, n.log_index, n.block_number, n.block_hash, n.address, n.contract, n.event, n.args
    FROM new_events n WHERE n.contract = 'RewardDistributor' AND n.event = 'DisputeBondSet';
    RETURN NULL;
END $$;

CREATE TRIGGER route_dispute_bond AFTER INSERT ON chain_events
    REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION route_dispute_bond();
