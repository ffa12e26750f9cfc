-- An interactive inference's row is claimed by the `serve` process answering it: `lease_owner` renews
-- `lease_expires_at` while it runs, and any live `serve` fails a running row whose lease ran out (its process
-- died mid-answer): the payment is free for a retry, a credit charge is refunded, settlement holds the
-- payment until it is used again. Batch lines are fenced by their job's lease instead (no lease here).
ALTER TABLE inferences ADD COLUMN lease_owner text, ADD COLUMN lease_expires_at timestamptz;
-- rows left running before leases existed belong to processes gone by now
UPDATE inferences SET lease_expires_at = now() WHERE status = 'running' AND batch_job_id IS NULL;
CREATE INDEX inferences_running_leases ON inferences (lease_expires_at)
    WHERE status = 'running' AND batch_job_id IS NULL;
