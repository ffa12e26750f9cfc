-- An inference served on a payment that a reorg then took off the chain is marked: its answer was given on a
-- payment that no longer exists. (Settlement never pays out on it: it reads only indexed payments, and the
-- reorg removed this one from the index.) A payment mined again in a later block clears the mark. One
-- statement-level trigger each way, so the indexer's bulk writes cost one join, not one update per row.
ALTER TABLE inferences ADD COLUMN payment_removed_at TIMESTAMPTZ;
CREATE INDEX inferences_paid_by ON inferences (chain_id, payer, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX inferences_payment_removed ON inferences (chain_id) WHERE payment_removed_at IS NOT NULL;

CREATE FUNCTION mark_removed_payments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE inferences i SET payment_removed_at = now()
    FROM removed r
    WHERE i.chain_id = r.chain_id AND i.payer = r.payer AND i.request_id = r.request_id
      AND i.payment_removed_at IS NULL;
    RETURN NULL;
END $$;

CREATE FUNCTION clear_removed_payments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE inferences i SET payment_removed_at = NULL
    FROM mined m
    WHERE i.payment_removed_at IS NOT NULL
      AND i.chain_id = m.chain_id AND i.payer = m.payer AND i.request_id = m.request_id;
    RETURN NULL;
END $$;

CREATE TRIGGER inference_payments_removed AFTER DELETE ON inference_payments
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION mark_removed_payments();
CREATE TRIGGER inference_payments_mined AFTER INSERT ON inference_payments
    REFERENCING NEW TABLE AS mined FOR EACH STATEMENT EXECUTE FUNCTION clear_removed_payments();
