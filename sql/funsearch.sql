-- FunSearch's programs database (eqflow.funsearch): one named block per statement, as in queries.sql.

-- name: fs_init_islands
INSERT INTO fs_islands (exp_id, island)
SELECT %(exp_id)s, g FROM generate_series(0, %(n)s - 1) AS g
ON CONFLICT DO NOTHING;

-- name: fs_islands
SELECT island, version, reset_at FROM fs_islands WHERE exp_id = %(exp_id)s ORDER BY island;

-- name: fs_current_programs
-- The programs of every island's current version, oldest first (the order they were registered).
SELECT p.program_id, p.island, p.body, p.scores, p.score, p.behaviour_hash
FROM fs_programs p
JOIN fs_islands i ON i.exp_id = p.exp_id AND i.island = p.island AND i.version = p.island_version
WHERE p.exp_id = %(exp_id)s
ORDER BY p.program_id;

-- name: fs_reset_islands
UPDATE fs_islands SET version = version + 1, reset_at = now()
WHERE exp_id = %(exp_id)s AND island = ANY(%(islands)s::integer[])
RETURNING island, version;

-- name: fs_cancel_queued
-- An experiment's queued tasks of the given types (a finished run) or tags (a reset island's
-- work: its tasks carry the tag 'island:<n>'), in one statement; the filter not used is NULL.
-- Out of task_queue first, as cancel_tasks (migration 0015).
WITH dequeued AS (
    DELETE FROM task_queue q USING tasks t
    WHERE q.task_id = t.task_id AND t.exp_id = %(exp_id)s AND t.status = 'queued'
      AND (%(tags)s::text[] IS NULL OR t.tag = ANY(%(tags)s::text[]))
      AND (%(types)s::integer[] IS NULL OR t.task_type = ANY(%(types)s::integer[]))
    RETURNING q.task_id, q.priority)
UPDATE tasks t SET status = 'canceled', finished_at = now(), priority = d.priority
FROM dequeued d
WHERE t.task_id = d.task_id AND t.status = 'queued'
RETURNING t.task_id;

-- name: fs_open_tasks
-- Tasks still in flight, for re-attaching after a restart.
SELECT task_id, task_type, tag FROM tasks
WHERE exp_id = %(exp_id)s AND status IN ('queued', 'running') AND task_type = ANY(%(types)s::integer[])
ORDER BY task_id;

-- name: fs_finished_unprocessed_samples
-- Sample tasks that finished while no ME was watching: no candidate of theirs is recorded (a
-- sample that gave nothing usable records one marker row, idx -1).
SELECT t.task_id FROM tasks t
WHERE t.exp_id = %(exp_id)s AND t.task_type = %(task_type)s
  AND t.status IN ('complete', 'failed', 'canceled')
  AND NOT EXISTS (SELECT 1 FROM fs_candidates c
                  WHERE c.exp_id = t.exp_id AND c.sample_task_id = t.task_id)
ORDER BY t.task_id;

-- name: fs_insert_candidates
INSERT INTO fs_candidates (exp_id, sample_task_id, idx, island, island_version, parents, body_hash, state)
SELECT %(exp_id)s, %(sample_task_id)s, c.idx, %(island)s, %(island_version)s, %(parents)s::bigint[],
       c.body_hash, c.state
FROM unnest(%(idxs)s::integer[], %(body_hashes)s::text[], %(states)s::text[]) AS c(idx, body_hash, state)
ON CONFLICT DO NOTHING
RETURNING idx;

-- name: fs_claim_evaluation
-- The first candidate with this body claims its evaluation; later ones wait on it (the cache).
INSERT INTO fs_evaluations (exp_id, body_hash, body)
VALUES (%(exp_id)s, %(body_hash)s, %(body)s)
ON CONFLICT DO NOTHING
RETURNING body_hash;

-- name: fs_set_evaluation_task
UPDATE fs_evaluations SET task_id = %(task_id)s
WHERE exp_id = %(exp_id)s AND body_hash = %(body_hash)s AND status IS NULL;

-- name: fs_evaluation
SELECT status, scores, score, behaviour_hash, task_id, body FROM fs_evaluations
WHERE exp_id = %(exp_id)s AND body_hash = %(body_hash)s;

-- name: fs_unfinished_evaluations
-- Evaluations without a result: claimed but never submitted (the ME died in between), in flight,
-- or finished while no ME was watching.
SELECT e.body_hash, e.body, e.task_id, t.status::text, t.result, t.error
FROM fs_evaluations e LEFT JOIN tasks t ON t.task_id = e.task_id
WHERE e.exp_id = %(exp_id)s AND e.status IS NULL
ORDER BY e.body_hash;

-- name: fs_evaluation_by_task
SELECT body_hash FROM fs_evaluations WHERE exp_id = %(exp_id)s AND task_id = %(task_id)s;

-- name: fs_record_evaluation
UPDATE fs_evaluations
SET status = %(status)s, scores = %(scores)s, score = %(score)s, behaviour_hash = %(behaviour_hash)s,
    cpu_s = %(cpu_s)s, error = %(error)s, evaluated_at = now()
WHERE exp_id = %(exp_id)s AND body_hash = %(body_hash)s AND status IS NULL;

-- name: fs_forget_evaluation
DELETE FROM fs_evaluations WHERE exp_id = %(exp_id)s AND body_hash = %(body_hash)s AND status IS NULL;

-- name: fs_pending_candidates
SELECT sample_task_id, idx, island, island_version, parents FROM fs_candidates
WHERE exp_id = %(exp_id)s AND body_hash = %(body_hash)s AND state = 'pending'
ORDER BY sample_task_id, idx
FOR UPDATE;

-- name: fs_resolvable_bodies
-- Pending candidates whose evaluation has finished: a restart resolves them.
SELECT DISTINCT c.body_hash FROM fs_candidates c
JOIN fs_evaluations e ON e.exp_id = c.exp_id AND e.body_hash = c.body_hash
WHERE c.exp_id = %(exp_id)s AND c.state = 'pending' AND e.status IS NOT NULL;

-- name: fs_insert_program
INSERT INTO fs_programs (exp_id, island, island_version, body, body_hash, behaviour_hash, scores, score,
                         parents, sampler)
VALUES (%(exp_id)s, %(island)s, %(island_version)s, %(body)s, %(body_hash)s, %(behaviour_hash)s,
        %(scores)s, %(score)s, %(parents)s::bigint[], %(sampler)s)
ON CONFLICT (exp_id, island, island_version, behaviour_hash) DO NOTHING
RETURNING program_id, created_at;

-- name: fs_set_candidate_state
UPDATE fs_candidates SET state = %(state)s, program_id = %(program_id)s
WHERE exp_id = %(exp_id)s AND sample_task_id = %(sample_task_id)s AND idx = %(idx)s;

-- name: fs_island_version
SELECT version FROM fs_islands WHERE exp_id = %(exp_id)s AND island = %(island)s;

-- name: fs_counts
SELECT (SELECT count(*) FROM fs_evaluations WHERE exp_id = %(exp_id)s AND status IS NOT NULL),
       (SELECT count(*) FROM fs_programs WHERE exp_id = %(exp_id)s),
       (SELECT count(*) FROM fs_candidates WHERE exp_id = %(exp_id)s);

-- name: fs_candidate_states
SELECT state, count(*) FROM fs_candidates WHERE exp_id = %(exp_id)s GROUP BY state ORDER BY state;

-- name: fs_evaluation_statuses
SELECT coalesce(status, 'in flight'), count(*), coalesce(sum(cpu_s), 0)
FROM fs_evaluations WHERE exp_id = %(exp_id)s GROUP BY 1 ORDER BY 1;

-- name: fs_all_programs
SELECT program_id, island, island_version, body, body_hash, behaviour_hash, scores, score, parents, sampler,
       created_at
FROM fs_programs WHERE exp_id = %(exp_id)s ORDER BY program_id;

-- name: fs_evaluations_in_order
-- Finished evaluations in the order they finished: the x axis of the progress plots.
SELECT e.evaluated_at, e.status, e.score, e.scores FROM fs_evaluations e
WHERE e.exp_id = %(exp_id)s AND e.status IS NOT NULL
ORDER BY e.evaluated_at, e.body_hash;

-- name: fs_task_payloads
SELECT task_id, payload FROM tasks WHERE task_id = ANY(%(task_ids)s::bigint[]);

-- name: fs_task_outcomes
SELECT task_id, status::text, result, error, pool FROM tasks WHERE task_id = ANY(%(task_ids)s::bigint[]);
