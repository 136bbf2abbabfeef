-- eqflow schema, version 4: what a workflow did besides running tasks, as an append-only log
-- per experiment (a retrain, a pool started or stopped, a budget reached, the run finished).
-- Outputs and dashboards are drawn from it and from the tasks' own timestamps, so a re-run or
-- a resumed run regenerates the same figures instead of trusting one process's memory.
CREATE TABLE experiment_events (
    event_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exp_id    text NOT NULL CHECK (length(exp_id) BETWEEN 1 AND 200),
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind      text NOT NULL CHECK (length(kind) BETWEEN 1 AND 100),
    data      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX experiment_events_exp_idx ON experiment_events (exp_id, event_id);
