-- Requests in a batch input file, counted at upload (a batch's request_counts.total without re-reading it).
ALTER TABLE files ADD COLUMN lines INTEGER;
