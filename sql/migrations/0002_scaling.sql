-- eqflow schema, version 2: the scaling controller's decisions, kept for `eqflow pool list`.
CREATE TABLE scaling_decisions (
    decision_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    task_type    integer NOT NULL,
    action       text NOT NULL CHECK (action IN ('start', 'stop', 'hold')),
    reason       text NOT NULL,
    queued       integer NOT NULL,
    pools        integer NOT NULL,
    job_id       text
);
CREATE INDEX scaling_decisions_at_idx ON scaling_decisions (at DESC);
