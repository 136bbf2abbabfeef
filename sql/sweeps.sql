-- Every statement eqflow.sweeps runs, one named block each ("-- name: sweep_..."), %(param)s
-- parameters. The same text runs through the connector (psycopg) and, for DataFrames, through
-- SQLAlchemy's exec_driver_sql on a psycopg engine, which takes the same parameter style.

-- ---- grid and binary searches --------------------------------------------------------------

-- name: sweep_search_create
INSERT INTO sweep_searches (exp_id, kind, base_dir, state)
VALUES (%(exp_id)s, %(kind)s, %(base_dir)s, %(state)s)
ON CONFLICT (exp_id) DO NOTHING;

-- name: sweep_search_get
SELECT kind, base_dir, state, status FROM sweep_searches WHERE exp_id = %(exp_id)s;

-- name: sweep_search_save
UPDATE sweep_searches SET state = %(state)s, status = %(status)s, updated_at = now()
WHERE exp_id = %(exp_id)s;

-- name: sweep_search_delete
DELETE FROM sweep_searches WHERE exp_id = %(exp_id)s;

-- ---- ASHA experiments ----------------------------------------------------------------------

-- name: sweep_experiment_get
SELECT name, local_dir, generation, asha FROM sweep_experiments WHERE exp_id = %(exp_id)s;

-- name: sweep_experiment_create
INSERT INTO sweep_experiments (exp_id, name, local_dir, generation, asha, train, runtime)
VALUES (%(exp_id)s, %(name)s, %(local_dir)s, %(generation)s, %(asha)s, %(train)s, %(runtime)s);

-- name: sweep_experiment_refresh
-- restore=True: the same trials, this driver's train function and import path.
UPDATE sweep_experiments SET train = %(train)s, runtime = %(runtime)s WHERE exp_id = %(exp_id)s;

-- name: sweep_experiment_delete
-- Trials, metrics and rung records go with it (ON DELETE CASCADE).
DELETE FROM sweep_experiments WHERE exp_id = %(exp_id)s;

-- name: sweep_trials_insert
INSERT INTO sweep_trials (exp_id, trial_id, seq, cfg)
SELECT %(exp_id)s, t.trial_id, t.seq, t.cfg
FROM unnest(%(trial_ids)s::text[], %(seqs)s::integer[], %(cfgs)s::jsonb[]) AS t(trial_id, seq, cfg)
ON CONFLICT (exp_id, trial_id) DO NOTHING;

-- name: sweep_trials_set_tasks
UPDATE sweep_trials s SET task_id = t.task_id
FROM unnest(%(trial_ids)s::text[], %(task_ids)s::bigint[]) AS t(trial_id, task_id)
WHERE s.exp_id = %(exp_id)s AND s.trial_id = t.trial_id;

-- name: sweep_trials_list
SELECT trial_id, seq, cfg, task_id, status, error, started_at, ended_at,
       extract(epoch FROM coalesce(ended_at, clock_timestamp()) - started_at) AS runtime_s
FROM sweep_trials WHERE exp_id = %(exp_id)s ORDER BY seq;

-- name: sweep_trial_start
-- The worker's side: a trial of the current generation that has not ended starts (again, after
-- a lost worker); returns its status before and the experiment's pruning rule.
UPDATE sweep_trials s
SET status = 'running', started_at = coalesce(s.started_at, clock_timestamp())
FROM sweep_experiments e
WHERE s.exp_id = %(exp_id)s AND s.trial_id = %(trial_id)s AND e.exp_id = s.exp_id
  AND e.generation = %(generation)s AND s.status IN ('scheduled', 'running')
RETURNING e.asha, e.train, e.runtime, s.cfg;

-- name: sweep_trial_finish
UPDATE sweep_trials SET status = %(status)s, error = %(error)s, ended_at = clock_timestamp()
WHERE exp_id = %(exp_id)s AND trial_id = %(trial_id)s AND status IN ('scheduled', 'running')
RETURNING trial_id;

-- name: sweep_trials_fail
-- The driver's side: trials whose task failed for good (worker lost past max_attempts,
-- canceled) fail with the task's error, unless the trial recorded its own end first.
UPDATE sweep_trials s SET status = 'failed', error = t.error, ended_at = clock_timestamp()
FROM unnest(%(trial_ids)s::text[], %(errors)s::text[]) AS t(trial_id, error)
WHERE s.exp_id = %(exp_id)s AND s.trial_id = t.trial_id AND s.status IN ('scheduled', 'running')
RETURNING s.trial_id;

-- name: sweep_trial_offset
UPDATE sweep_trials SET iteration_offset = coalesce(iteration_offset, %(offset)s)
WHERE exp_id = %(exp_id)s AND trial_id = %(trial_id)s;

-- name: sweep_status_counts
SELECT status, count(*) FROM sweep_trials WHERE exp_id = %(exp_id)s GROUP BY status;

-- ---- metrics and rungs ---------------------------------------------------------------------

-- name: sweep_metrics_insert
-- One statement per log() call, whatever the number of metrics; a trial re-run after a lost
-- worker overwrites its earlier values.
INSERT INTO sweep_metrics (exp_id, trial_id, iteration, metric, value)
SELECT %(exp_id)s, %(trial_id)s, %(iteration)s, m.metric, m.value
FROM unnest(%(metrics)s::text[], %(values)s::double precision[]) AS m(metric, value)
ON CONFLICT (exp_id, trial_id, iteration, metric)
DO UPDATE SET value = EXCLUDED.value, logged_at = EXCLUDED.logged_at;

-- name: sweep_decide_rung
SELECT decision, better, recorded
FROM sweep_decide_rung(%(exp_id)s, %(trial_id)s, %(rung)s, %(value)s, %(rf)s, %(mode)s);

-- name: sweep_rung_record
-- slurm_sweeps' rule: the value a trial logged at exactly a rung's iteration, no decision yet.
INSERT INTO sweep_rungs (exp_id, trial_id, rung, value)
VALUES (%(exp_id)s, %(trial_id)s, %(rung)s, %(value)s)
ON CONFLICT (exp_id, trial_id, rung) DO NOTHING;

-- name: sweep_percentile_check
-- slurm_sweeps' rule, re-checked on every log: the rungs where this trial's value lies past the
-- 1/rf percentile (linear interpolation, NaN ignored) of every value recorded at the rung.
WITH cut AS (
    SELECT r.rung,
           percentile_cont(CASE WHEN %(mode)s = 'min' THEN 1.0 / %(rf)s ELSE 1.0 - 1.0 / %(rf)s END)
               WITHIN GROUP (ORDER BY r.value) FILTER (WHERE r.value <> 'NaN') AS cutoff
    FROM sweep_rungs r
    WHERE r.exp_id = %(exp_id)s
      AND r.rung IN (SELECT rung FROM sweep_rungs WHERE exp_id = %(exp_id)s AND trial_id = %(trial_id)s)
    GROUP BY r.rung
)
SELECT r.rung FROM sweep_rungs r JOIN cut ON cut.rung = r.rung
WHERE r.exp_id = %(exp_id)s AND r.trial_id = %(trial_id)s
  AND (r.value = 'NaN' OR (%(mode)s = 'min' AND r.value > cut.cutoff)
       OR (%(mode)s = 'max' AND r.value < cut.cutoff))
ORDER BY r.rung;

-- name: sweep_rung_pruned
UPDATE sweep_rungs SET decision = 'prune', decided_at = clock_timestamp()
WHERE exp_id = %(exp_id)s AND trial_id = %(trial_id)s AND rung = %(rung)s AND decision IS NULL;

-- ---- DataFrames (read through SQLAlchemy) --------------------------------------------------

-- name: sweep_metrics_frame
SELECT trial_id, iteration, metric, value, logged_at
FROM sweep_metrics WHERE exp_id = %(exp_id)s ORDER BY trial_id, iteration, metric;

-- name: sweep_trials_frame
SELECT trial_id, seq, status, cfg::text AS cfg, error, started_at, ended_at,
       extract(epoch FROM coalesce(ended_at, clock_timestamp()) - started_at) AS runtime_s
FROM sweep_trials WHERE exp_id = %(exp_id)s ORDER BY seq;

-- name: sweep_rungs_frame
SELECT trial_id, rung, value, decision, seq, decided_at
FROM sweep_rungs WHERE exp_id = %(exp_id)s ORDER BY seq;
