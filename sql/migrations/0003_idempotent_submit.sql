-- eqflow schema, version 3: submissions carry an idempotency key, so a client that retries a
-- submit whose reply it lost gets the same task ids instead of a second copy of the tasks.
CREATE TABLE submissions (
    idem_key    text PRIMARY KEY CHECK (length(idem_key) BETWEEN 1 AND 200),
    exp_id      text NOT NULL,
    task_ids    bigint[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
