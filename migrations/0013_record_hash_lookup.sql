-- Public settlement reports name a payment's attribution record by its hash only (inference ids are what keeps
-- records private); `settle verify` finds the inference from that hash.
CREATE INDEX attributions_record_hash ON attributions (record_hash);
