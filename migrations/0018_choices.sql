-- `n` > 1: one request answered with several choices is one inference (one payment, paid as n completions;
-- one attribution record over every choice, so settlement pays one weight set per payment as before). The
-- row keeps choice 0 in output_tokens / output_text / finish_reason and counts every choice's tokens in
-- completion_tokens; the other choices are here, written in the transaction that marks the row succeeded.
ALTER TABLE inferences ADD COLUMN choices SMALLINT NOT NULL DEFAULT 1 CHECK (choices BETWEEN 1 AND 128);

CREATE TABLE inference_choices (
    inference_id  TEXT NOT NULL REFERENCES inferences (id) ON DELETE CASCADE,
    choice        SMALLINT NOT NULL CHECK (choice >= 1),
    output_tokens INTEGER[] NOT NULL,
    output_text   TEXT NOT NULL,
    finish_reason TEXT NOT NULL CHECK (finish_reason IN ('stop', 'length')),
    PRIMARY KEY (inference_id, choice)
);
