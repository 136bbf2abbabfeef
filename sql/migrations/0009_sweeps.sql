-- eqflow schema, version 9: parameter sweeps (eqflow.sweeps).
-- Jobs and trials are ordinary tasks; these tables hold what a sweep driver must not lose when
-- it is killed: the state of every grid/binary search after each round, ASHA trials with their
-- outcome, their metrics (long format) and every rung decision, made once.

-- One row per grid or binary search (Runner's API). state holds the search's progress as JSON
-- (range, round, results so far, the task ids of the round in flight), rewritten after each round.
CREATE TABLE sweep_searches (
    exp_id      text PRIMARY KEY CHECK (length(exp_id) BETWEEN 1 AND 200),
    kind        text NOT NULL CHECK (kind IN ('grid', 'binary')),
    base_dir    text NOT NULL,
    state       jsonb NOT NULL DEFAULT '{}'::jsonb,
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'finished')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per ASHA experiment (slurm_sweeps' API). generation changes when an experiment is
-- overwritten, so a task queued for the old one runs nothing.
CREATE TABLE sweep_experiments (
    exp_id      text PRIMARY KEY CHECK (length(exp_id) BETWEEN 1 AND 200),
    name        text NOT NULL,
    local_dir   text NOT NULL,
    generation  text NOT NULL,
    asha        jsonb,          -- NULL: no pruning
    train       text NOT NULL,  -- the train function, pickled by reference (base64)
    runtime     jsonb NOT NULL DEFAULT '{}'::jsonb,  -- the driver's script and import path
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sweep_trials (
    exp_id      text NOT NULL REFERENCES sweep_experiments (exp_id) ON DELETE CASCADE,
    trial_id    text NOT NULL,
    seq         integer NOT NULL,          -- sampling order
    cfg         jsonb NOT NULL,
    task_id     bigint,
    status      text NOT NULL DEFAULT 'scheduled'
                CHECK (status IN ('scheduled', 'running', 'completed', 'pruned', 'failed')),
    error       text,
    iteration_offset integer,              -- 1 when the trial counts its iterations from 0
    started_at  timestamptz,
    ended_at    timestamptz,
    PRIMARY KEY (exp_id, trial_id),
    CONSTRAINT sweep_trial_failure_has_error CHECK (status <> 'failed' OR error IS NOT NULL),
    CONSTRAINT sweep_trial_end_iff_terminal
        CHECK ((status IN ('completed', 'pruned', 'failed')) = (ended_at IS NOT NULL))
);
CREATE INDEX sweep_trials_task_idx ON sweep_trials (task_id);

-- Metrics in long format: one row per (trial, iteration, metric).
CREATE TABLE sweep_metrics (
    exp_id      text NOT NULL,
    trial_id    text NOT NULL,
    iteration   integer NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    logged_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (exp_id, trial_id, iteration, metric),
    FOREIGN KEY (exp_id, trial_id) REFERENCES sweep_trials (exp_id, trial_id) ON DELETE CASCADE
);

-- Rung records: the value a trial brought to a rung and what was decided there. The primary
-- key makes each decision once; seq gives the order decisions were made in.
CREATE TABLE sweep_rungs (
    exp_id      text NOT NULL,
    trial_id    text NOT NULL,
    rung        integer NOT NULL CHECK (rung >= 1),
    value       double precision NOT NULL,
    decision    text CHECK (decision IN ('continue', 'prune')),
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    decided_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (exp_id, trial_id, rung),
    FOREIGN KEY (exp_id, trial_id) REFERENCES sweep_trials (exp_id, trial_id) ON DELETE CASCADE
);
CREATE INDEX sweep_rungs_rung_idx ON sweep_rungs (exp_id, rung, value);

-- Asynchronous successive halving (Li et al., "A System for Massively Parallel Hyperparameter
-- Tuning"): a trial's first report at or past a rung continues only if it is in the top
-- 1/reduction_factor of the values recorded at that rung so far (at least the best one).
-- Decisions at one rung of one experiment are serialised by an advisory lock, so trials that
-- report at the same moment each see the others' values; a decision already made is returned
-- as it was. In READ COMMITTED every statement of this (volatile) function takes a fresh
-- snapshot, so the INSERT sees every decision committed before the lock was granted.
CREATE FUNCTION sweep_decide_rung(p_exp text, p_trial text, p_rung integer, p_value double precision,
                                  p_rf integer, p_mode text)
RETURNS TABLE (decision text, better integer, recorded integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_better integer;
    v_n integer;
    v_decision text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('eqflow.sweeps:' || p_exp), p_rung);
    SELECT r.decision INTO v_decision FROM sweep_rungs r
    WHERE r.exp_id = p_exp AND r.trial_id = p_trial AND r.rung = p_rung;
    IF FOUND THEN
        RETURN QUERY SELECT v_decision, NULL::integer, NULL::integer;
        RETURN;
    END IF;
    SELECT count(*) + 1,
           count(*) FILTER (WHERE p_value = 'NaN'
                               OR (p_mode = 'min' AND r.value < p_value)
                               OR (p_mode = 'max' AND r.value > p_value AND r.value <> 'NaN'))
    INTO v_n, v_better
    FROM sweep_rungs r WHERE r.exp_id = p_exp AND r.rung = p_rung;
    v_decision := CASE WHEN p_value <> 'NaN' AND v_better < greatest(1, v_n / p_rf)
                       THEN 'continue' ELSE 'prune' END;
    INSERT INTO sweep_rungs (exp_id, trial_id, rung, value, decision)
    VALUES (p_exp, p_trial, p_rung, p_value, v_decision);
    RETURN QUERY SELECT v_decision, v_better, v_n;
END;
$$;
