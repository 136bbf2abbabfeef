-- Every statement eqflow runs against its database, one named block each.
-- Blocks start with "-- name: <name>" and take %(param)s parameters (psycopg style); text arrays
-- are %(param)b, sent in binary (eqflow/db/arrays.py says why).

-- name: upsert_experiment
INSERT INTO experiments (exp_id, config)
VALUES (%(exp_id)s, %(config)s)
ON CONFLICT (exp_id) DO NOTHING;

-- name: get_experiment
SELECT exp_id, created_at, config, status FROM experiments WHERE exp_id = %(exp_id)s;

-- name: submit_tasks
INSERT INTO tasks (exp_id, task_type, payload, priority, tag, max_attempts)
SELECT %(exp_id)s, %(task_type)s, p.payload, p.priority, p.tag, %(max_attempts)s
FROM unnest(%(payloads)b::text[], %(priorities)s::integer[], %(tags)b::text[])
     WITH ORDINALITY AS p(payload, priority, tag, ord)
ORDER BY p.ord
RETURNING task_id;

-- name: submit_tasks_uniform
-- submit_tasks when every task has the same priority and tag: one array to ship, not three.
INSERT INTO tasks (exp_id, task_type, payload, priority, tag, max_attempts)
SELECT %(exp_id)s, %(task_type)s, p.payload, %(priority)s, %(tag)s, %(max_attempts)s
FROM unnest(%(payloads)b::text[]) WITH ORDINALITY AS p(payload, ord)
ORDER BY p.ord
RETURNING task_id;

-- name: claim_tasks
-- Up to n queued tasks of the given types, highest priority first: eqflow_report_and_claim
-- (migration 0013) with nothing to report. Its generic plans read task_queue's claim index in
-- order whatever n (0015), and it counts the claims itself (no metrics trigger).
SELECT task_id, exp_id, task_type, priority, payload, tag, attempts, claim_id
FROM eqflow_report_and_claim('{}'::bigint[], '{}'::bigint[], '{}'::text[],
                             %(task_types)s::integer[], %(n)s, %(pool)s, %(lease_s)s)
WHERE claimed;

-- name: report_results
-- A NULL claim id (EQ-SQL compatibility) accepts any running holder. The report of
-- report_and_claim (migration 0012) with nothing to claim. The accepted tasks are announced by
-- notify_done, which the caller runs right after this has committed (migration 0010).
SELECT task_id, exp_id
FROM eqflow_report_and_claim(%(task_ids)s::bigint[], %(claim_ids)s::bigint[], %(results)b::text[],
                             '{}'::integer[], 0, '', 0)
WHERE NOT claimed;

-- name: notify_done
-- The eqflow_done notifications of the tasks the last report on this connection accepted
-- (report_results, report_and_claim: their messages wait in the session setting eqflow.done),
-- sent right after that report's commit, in the same round trip (a pipeline), in a transaction
-- of its own that does not wait for its WAL flush. A notifying transaction holds PostgreSQL's
-- global notify lock through its commit, so notifying inside the durable report would serialize
-- every worker's commit (no group commit). A wake-up lost to a crash costs a waiter one safety
-- poll. Messages are chunked as eqflow_announce (0001) does: 400 tasks of one experiment each.
WITH msgs AS MATERIALIZED (
    SELECT unnest(coalesce(nullif(current_setting('eqflow.done', true), ''), '{}')::text[]) AS msg),
sent AS MATERIALIZED (SELECT count(pg_notify('eqflow_done', msg)) AS n FROM msgs)
SELECT set_config('synchronous_commit', 'off', true), n, set_config('eqflow.done', '{}', false) FROM sent;

-- name: report_and_claim
-- report_results and claim_tasks in one statement, one commit: a pool at
-- steady state spends one transaction per task (batch) instead of two (migration 0012). The
-- reported rows are 'running' and the claimed ones 'queued', so the two updates never touch the
-- same row. The first column tells the accepted reports (false: task_id, exp_id) from the claimed
-- tasks (true). As report_results, the caller sends notify_done after the commit.
SELECT * FROM eqflow_report_and_claim(%(task_ids)s::bigint[], %(claim_ids)s::bigint[], %(results)b::text[],
                                      %(task_types)s::integer[], %(n)s, %(pool)s, %(lease_s)s);

-- name: report_failures
-- Retryable failures go back to the queue until max_attempts runs have failed (or were lost);
-- then the task fails for good.
UPDATE tasks t
SET status = CASE WHEN r.retry AND t.failures + 1 < t.max_attempts
                  THEN 'queued' ELSE 'failed' END::eqflow_task_status,
    error = r.error, failures = t.failures + 1,
    finished_at = CASE WHEN r.retry AND t.failures + 1 < t.max_attempts THEN NULL ELSE now() END,
    lease_expires_at = NULL
FROM unnest(%(task_ids)s::bigint[], %(claim_ids)s::bigint[], %(errors)b::text[], %(retry)s::boolean[])
     AS r(task_id, claim_id, error, retry)
WHERE t.task_id = r.task_id AND t.status = 'running'
  AND (r.claim_id IS NULL OR t.claim_id = r.claim_id)
RETURNING t.task_id, t.status::text;

-- name: release_tasks
-- A pool that stops returns what it holds. attempts counts runs started: a task whose run
-- started keeps its count (the payload may have run); one never handed to a worker
-- (unstarted) gets it back. Neither is a failure: failures (and max_attempts) are untouched.
UPDATE tasks t
SET status = 'queued', attempts = greatest(t.attempts - CASE WHEN %(unstarted)s THEN 1 ELSE 0 END, 0),
    lease_expires_at = NULL, started_at = NULL
FROM unnest(%(task_ids)s::bigint[], %(claim_ids)s::bigint[]) AS r(task_id, claim_id)
WHERE t.task_id = r.task_id AND t.status = 'running' AND t.claim_id = r.claim_id
RETURNING t.task_id;

-- name: extend_leases
UPDATE tasks t
SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
FROM unnest(%(task_ids)s::bigint[], %(claim_ids)s::bigint[]) AS r(task_id, claim_id)
WHERE t.task_id = r.task_id AND t.status = 'running' AND t.claim_id = r.claim_id
RETURNING t.task_id;

-- name: rescue_expired
-- Expired leases: the run is lost, a failure. Back to the queue, or failed once max_attempts
-- runs have failed or were lost.
UPDATE tasks t
SET status = CASE WHEN t.failures + 1 < t.max_attempts THEN 'queued' ELSE 'failed' END::eqflow_task_status,
    error = format('lease expired (pool %%s, run %%s, failure %%s of at most %%s)',
                   t.pool, t.attempts, t.failures + 1, t.max_attempts),
    failures = t.failures + 1,
    finished_at = CASE WHEN t.failures + 1 < t.max_attempts THEN NULL ELSE now() END,
    lease_expires_at = NULL
WHERE t.task_id IN (
    SELECT task_id FROM tasks
    WHERE status = 'running' AND lease_expires_at < now()
    FOR UPDATE SKIP LOCKED)
RETURNING t.task_id, t.status::text;

-- name: cancel_tasks
-- All or nothing: if any id is unknown, eqflow_require_known raises EQ404 with the unknown ids
-- and nothing changes (migration 0015). Each task leaves task_queue before its tasks row is
-- written, the order every writer takes (0015), and keeps the priority it had there.
WITH dequeued AS (
    DELETE FROM task_queue q WHERE q.task_id = ANY(%(task_ids)s::bigint[])
    RETURNING q.task_id, q.priority),
changed AS (
    UPDATE tasks t SET status = 'canceled', finished_at = now(), priority = d.priority
    FROM dequeued d
    WHERE t.task_id = d.task_id AND t.status = 'queued'
    RETURNING t.task_id),
checked AS MATERIALIZED (
    SELECT eqflow_require_known(%(task_ids)s::bigint[], ARRAY(SELECT task_id FROM changed)) AS ok)
-- UNION ALL runs the check even when nothing changed.
SELECT task_id FROM changed UNION ALL SELECT NULL FROM checked WHERE NOT ok;

-- name: set_priority
-- Only queued tasks whose priority differs change (and come back); all or nothing, as
-- cancel_tasks. Only task_queue is written (0015): tasks keeps its row, and a queued task that
-- stays queued is not new work (no notification).
WITH changed AS (
    UPDATE task_queue q SET priority = %(priority)s
    WHERE q.task_id = ANY(%(task_ids)s::bigint[])
      AND q.priority <> %(priority)s  -- an unchanged priority costs no row version
    RETURNING q.task_id),
checked AS MATERIALIZED (
    SELECT eqflow_require_known(%(task_ids)s::bigint[], ARRAY(SELECT task_id FROM changed)) AS ok)
SELECT task_id FROM changed UNION ALL SELECT NULL FROM checked WHERE NOT ok;

-- name: set_priorities
-- One priority per task; ids must be distinct. As set_priority.
WITH changed AS (
    UPDATE task_queue q SET priority = req.priority
    FROM unnest(%(task_ids)s::bigint[], %(priorities)s::integer[]) AS req(task_id, priority)
    WHERE q.task_id = req.task_id
      AND q.priority <> req.priority  -- an unchanged priority costs no row version
    RETURNING q.task_id),
checked AS MATERIALIZED (
    SELECT eqflow_require_known(%(task_ids)s::bigint[], ARRAY(SELECT task_id FROM changed)) AS ok)
SELECT task_id FROM changed UNION ALL SELECT NULL FROM checked WHERE NOT ok;

-- name: task_info
-- A queued task's priority is task_queue's (migration 0015).
SELECT t.task_id, t.exp_id, t.task_type, t.status::text, coalesce(q.priority, t.priority), t.pool, t.result,
       t.error, t.tag, t.attempts, t.max_attempts, t.created_at, t.started_at, t.finished_at
FROM tasks t LEFT JOIN task_queue q ON q.task_id = t.task_id AND t.status = 'queued'
WHERE t.task_id = ANY(%(task_ids)s::bigint[]);

-- name: finished_among
SELECT task_id, status::text, result, error, pool
FROM tasks
WHERE task_id = ANY(%(task_ids)s::bigint[]) AND status IN ('complete', 'failed', 'canceled');

-- name: experiment_tasks
SELECT task_id, exp_id, task_type, status::text, tag, result, error, pool
FROM tasks WHERE exp_id = %(exp_id)s ORDER BY task_id;

-- name: queue_stats
SELECT task_type, status::text, count(*)
FROM tasks
WHERE (%(exp_id)s::text IS NULL OR exp_id = %(exp_id)s)
GROUP BY task_type, status ORDER BY task_type, status;

-- name: count_open
-- Queued (task_queue, migration 0015) and running (tasks_lease_idx) tasks.
SELECT (SELECT count(*) FROM task_queue
        WHERE %(task_type)s::integer IS NULL OR task_type = %(task_type)s)
     + (SELECT count(*) FROM tasks
        WHERE status = 'running' AND (%(task_type)s::integer IS NULL OR task_type = %(task_type)s));

-- name: cancel_all_queued
-- As cancel_tasks: out of task_queue first (migration 0015).
WITH dequeued AS (DELETE FROM task_queue q RETURNING q.task_id, q.priority)
UPDATE tasks t SET status = 'canceled', finished_at = now(), priority = d.priority
FROM dequeued d
WHERE t.task_id = d.task_id AND t.status = 'queued'
RETURNING t.task_id;

-- name: register_pool
INSERT INTO pools (name, task_types, launcher, host, pid, job_id, n_workers, info)
VALUES (%(name)s, %(task_types)s, %(launcher)s, %(host)s, %(pid)s, %(job_id)s, %(n_workers)s, %(info)s)
RETURNING pool_id;

-- name: pool_heartbeat
UPDATE pools SET heartbeat_at = now()
WHERE pool_id = %(pool_id)s
RETURNING stop_requested;

-- name: pool_stopped
UPDATE pools SET status = 'stopped', stopped_at = now() WHERE pool_id = %(pool_id)s;

-- name: request_pool_stop
UPDATE pools SET stop_requested = %(mode)s
WHERE status IN ('starting', 'running') AND task_types && %(task_types)s::integer[]
RETURNING pool_id, name;

-- name: list_pools
SELECT pool_id, name, task_types, launcher, host, pid, job_id, status, n_workers,
       stop_requested, started_at, heartbeat_at, stopped_at
FROM pools
WHERE (%(active_only)s::boolean IS FALSE OR status IN ('starting', 'running'))
ORDER BY pool_id;

-- name: request_pool_stop_by_id
UPDATE pools SET stop_requested = %(mode)s
WHERE pool_id = %(pool_id)s AND status IN ('starting', 'running')
RETURNING pool_id;

-- name: pool_running_counts
SELECT pool, count(*) FROM tasks
WHERE status = 'running' AND pool = ANY(%(pools)b::text[])
GROUP BY pool;

-- name: record_decision
INSERT INTO scaling_decisions (task_type, action, reason, queued, pools, job_id)
VALUES (%(task_type)s, %(action)s, %(reason)s, %(queued)s, %(pools)s, %(job_id)s);

-- name: recent_decisions
SELECT at, task_type, action, reason, queued, pools, job_id
FROM scaling_decisions ORDER BY decision_id DESC LIMIT %(limit)s;

-- name: submit_tasks_once
-- As submit_tasks, once per idempotency key: a repeated key returns the first call's ids.
-- Two racing first calls: one commits, the other fails on the key and is retried by the client.
WITH fresh AS (
    SELECT NOT EXISTS (SELECT 1 FROM submissions WHERE idem_key = %(idem_key)s) AS ok),
ins AS (
    INSERT INTO tasks (exp_id, task_type, payload, priority, tag, max_attempts)
    SELECT %(exp_id)s, %(task_type)s, p.payload, p.priority, p.tag, %(max_attempts)s
    FROM unnest(%(payloads)b::text[], %(priorities)s::integer[], %(tags)b::text[])
         WITH ORDINALITY AS p(payload, priority, tag, ord)
    WHERE (SELECT ok FROM fresh)
    ORDER BY p.ord
    RETURNING task_id),
rec AS (
    INSERT INTO submissions (idem_key, exp_id, task_ids)
    SELECT %(idem_key)s, %(exp_id)s, coalesce(array_agg(task_id ORDER BY task_id), '{}')
    FROM ins HAVING (SELECT ok FROM fresh)
    RETURNING 1)
SELECT task_id FROM ins
UNION ALL
SELECT unnest(task_ids) FROM submissions WHERE idem_key = %(idem_key)s AND NOT (SELECT ok FROM fresh)
                                           AND exp_id = %(exp_id)s;

-- name: record_event
INSERT INTO experiment_events (exp_id, kind, data)
VALUES (%(exp_id)s, %(kind)s, %(data)s::jsonb)
RETURNING event_id, at;

-- name: experiment_events
SELECT event_id, at, kind, data FROM experiment_events
WHERE exp_id = %(exp_id)s AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
ORDER BY event_id;

-- name: set_experiment_status
-- An experiment's row may not exist yet (a transport that submits without creating it).
INSERT INTO experiments (exp_id, status) VALUES (%(exp_id)s, %(status)s)
ON CONFLICT (exp_id) DO UPDATE SET status = EXCLUDED.status;

-- name: compat_submit_tasks
-- EQ-SQL compatibility: submit_tasks, and each task listed as "result not read yet".
WITH ins AS (
    INSERT INTO tasks (exp_id, task_type, payload, priority, tag, max_attempts)
    SELECT %(exp_id)s, %(task_type)s, p.payload, %(priority)s, %(tag)s, %(max_attempts)s
    FROM unnest(%(payloads)b::text[]) WITH ORDINALITY AS p(payload, ord)
    ORDER BY p.ord
    RETURNING task_id),
unread AS (
    INSERT INTO compat_unread_results (task_id) SELECT task_id FROM ins)
SELECT task_id FROM ins;

-- name: compat_read_results
-- EQ-SQL compatibility: the state of tasks; the finished ones count as read from now on.
WITH t AS (
    SELECT task_id, exp_id, status, result, error, pool FROM tasks
    WHERE task_id = ANY(%(task_ids)s::bigint[])),
marked AS (
    DELETE FROM compat_unread_results u USING t
    WHERE u.task_id = t.task_id AND t.status IN ('complete', 'failed', 'canceled'))
SELECT task_id, exp_id, status::text, result, error, pool FROM t;

-- name: compat_queues_empty
-- EQ-SQL's two queues: nothing queued (its output queue), no result reported and unread (its
-- input queue; a task failed for good counts as reported).
SELECT NOT EXISTS (
           SELECT 1 FROM task_queue
           WHERE %(task_type)s::integer IS NULL OR task_type = %(task_type)s)
   AND NOT EXISTS (
           SELECT 1 FROM compat_unread_results u JOIN tasks t ON t.task_id = u.task_id
           WHERE t.status IN ('complete', 'failed')
             AND (%(task_type)s::integer IS NULL OR t.task_type = %(task_type)s));

-- name: compat_clear_unread
-- EQ-SQL's clear_queues empties its input queue too: unread results count as read (and
-- canceled tasks, which never have one, are no longer listed).
DELETE FROM compat_unread_results u USING tasks t
WHERE u.task_id = t.task_id AND t.status IN ('complete', 'failed', 'canceled');

-- Administration: migrations, the embedded cluster and the benchmark's scratch database.

-- name: schema_version_table
CREATE TABLE IF NOT EXISTS eqflow_schema_version (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: schema_version_table_exists
SELECT to_regclass('eqflow_schema_version') IS NOT NULL;

-- name: schema_version
SELECT coalesce(max(version), 0) FROM eqflow_schema_version;

-- name: record_migration
INSERT INTO eqflow_schema_version (version, name) VALUES (%(version)s, %(name)s);

-- name: advisory_lock
SELECT pg_advisory_lock(%(key)s);

-- name: advisory_unlock
SELECT pg_advisory_unlock(%(key)s);

-- name: create_eqflow_database
-- The embedded cluster's database: a constant identifier (CREATE DATABASE takes no parameters).
CREATE DATABASE eqflow;

-- name: bench_database_exists
SELECT 1 FROM pg_database WHERE datname = 'eqflow_bench';

-- name: create_bench_database
CREATE DATABASE eqflow_bench;

-- name: bench_truncate
-- Every table the benchmark writes, emptied before a run.
TRUNCATE tasks, pools, experiments, submissions, scaling_decisions, experiment_events, compat_unread_results;

-- name: server_durability
SELECT current_setting('fsync'), current_setting('synchronous_commit');

-- Dashboard (eqflow.dashboard): read-only, each bounded by a LIMIT or by one experiment's rows
-- (tasks_exp_idx); times are sent as epoch seconds.

-- name: dashboard_experiments
SELECT exp_id, extract(epoch FROM created_at)::float8, status
FROM experiments ORDER BY created_at DESC, exp_id LIMIT %(limit)s;

-- name: dashboard_task_counts
-- One pass over the experiment's tasks: counts per status and pool, completions in the last minute.
SELECT status::text, pool, count(*),
       count(*) FILTER (WHERE status = 'complete' AND finished_at >= now() - interval '60 seconds')
FROM tasks WHERE exp_id = %(exp_id)s
GROUP BY status, pool;

-- name: dashboard_task_range
-- The experiment's first and last task ids (two probes of tasks_exp_idx), when its first task
-- was created (the timeline's origin), and the database's now.
SELECT (SELECT task_id FROM tasks WHERE exp_id = %(exp_id)s ORDER BY task_id LIMIT 1),
       (SELECT task_id FROM tasks WHERE exp_id = %(exp_id)s ORDER BY task_id DESC LIMIT 1),
       extract(epoch FROM (SELECT created_at FROM tasks WHERE exp_id = %(exp_id)s ORDER BY task_id LIMIT 1))::float8,
       extract(epoch FROM now())::float8;

-- name: dashboard_timeline
-- Tasks created, started and finished per time bucket, over a sample of the experiment's tasks:
-- one task id in each run of step ids from lo to hi (at a hashed offset, so no period in the ids
-- aliases), looked up by primary key: at most (hi - lo) / step + 1 rows, whatever the size of
-- tasks (step 1: every task). A task never started
-- (canceled while queued) counts as started when it finished, so running = started - finished >= 0.
WITH sample AS (
    SELECT t.status, t.created_at, t.started_at, t.finished_at
    FROM tasks t
    WHERE t.task_id = ANY(ARRAY(
              SELECT least(%(lo)s::bigint + g * %(step)s + abs(hashint8(g)) %% %(step)s, %(hi)s::bigint)
              FROM generate_series(0, (%(hi)s::bigint - %(lo)s::bigint) / %(step)s) AS g))
      AND t.exp_id = %(exp_id)s)
SELECT extract(epoch FROM date_bin(make_interval(secs => %(width_s)s), e.at, to_timestamp(%(origin)s)))::float8,
       count(*) FILTER (WHERE e.k = 0),
       count(*) FILTER (WHERE e.k = 1),
       count(*) FILTER (WHERE e.k = 2 AND s.status = 'complete'),
       count(*) FILTER (WHERE e.k = 2 AND s.status = 'failed'),
       count(*) FILTER (WHERE e.k = 2 AND s.status = 'canceled')
FROM sample s
CROSS JOIN LATERAL (VALUES (0, s.created_at), (1, coalesce(s.started_at, s.finished_at)), (2, s.finished_at))
     AS e(k, at)
WHERE e.at IS NOT NULL
GROUP BY 1 ORDER BY 1;

-- name: dashboard_failures
-- The newest failed tasks, their errors cut to max_chars.
SELECT task_id, task_type, pool, failures, left(error, %(max_chars)s), length(error),
       extract(epoch FROM finished_at)::float8
FROM tasks WHERE exp_id = %(exp_id)s AND status = 'failed'
ORDER BY task_id DESC LIMIT %(limit)s;

-- name: dashboard_pools
-- The newest pools (active ones first) with their heartbeat age in seconds.
SELECT pool_id, name, name || '-' || pool_id, task_types, launcher, host, pid, job_id, status, n_workers,
       stop_requested, extract(epoch FROM started_at)::float8, extract(epoch FROM now() - heartbeat_at)::float8,
       extract(epoch FROM stopped_at)::float8
FROM pools
ORDER BY (status IN ('starting', 'running')) DESC, pool_id DESC LIMIT %(limit)s;

-- name: dashboard_decisions
SELECT extract(epoch FROM at)::float8, task_type, action, reason, queued, pools, job_id
FROM scaling_decisions ORDER BY at DESC LIMIT %(limit)s;

-- name: dashboard_events
-- The experiment's newest events of the given kinds (experiment_events_exp_idx, read backwards).
SELECT event_id, extract(epoch FROM at)::float8, kind, data
FROM experiment_events
WHERE exp_id = %(exp_id)s AND kind = ANY(%(kinds)b::text[])
ORDER BY event_id DESC LIMIT %(limit)s;

-- Metrics (/metrics, `eqflow status`): O(1) whatever the size of tasks. The task figures are
-- kept by the triggers of migration 0007; a read sums a few shards per figure.

-- name: metrics_counters
-- Every task figure and scaling decision count, summed over the shards: task_metrics (the
-- triggers of 0007) plus what eqflow_report_and_claim counted in task_flow (0013): its claims
-- took tasks from queued to running, its completions from running to complete.
WITH flow AS (
    SELECT task_type, bucket, sum(claimed) AS claimed, sum(completed) AS completed, sum(latency_sum) AS latency
    FROM task_flow GROUP BY task_type, bucket),
per_type AS (
    SELECT task_type, sum(claimed) AS claimed, sum(completed) AS completed, sum(latency) AS latency
    FROM flow GROUP BY task_type),
figures AS (
    SELECT metric, task_type, label, value FROM task_metrics
    UNION ALL SELECT 'tasks', task_type, 'queued', -claimed FROM per_type
    UNION ALL SELECT 'tasks', task_type, 'running', claimed - completed FROM per_type
    UNION ALL SELECT 'tasks', task_type, 'complete', completed FROM per_type WHERE completed > 0
    UNION ALL SELECT 'completed', task_type, '', completed FROM per_type WHERE completed > 0
    UNION ALL SELECT 'latency_sum', task_type, '', latency FROM per_type WHERE completed > 0
    UNION ALL SELECT 'latency_bucket', task_type, (eqflow_latency_labels())[bucket], completed
              FROM flow WHERE bucket > 0 AND completed > 0)
SELECT metric, task_type, label, sum(value)::float8
FROM figures
GROUP BY metric, task_type, label
ORDER BY metric, task_type, label;

-- name: metrics_pools
-- Live pools (starting or running; pools_live_idx) and those of them that heartbeat within alive_s.
SELECT count(*) FILTER (WHERE heartbeat_at >= now() - make_interval(secs => %(alive_s)s)), count(*)
FROM pools WHERE status IN ('starting', 'running');

-- name: metrics_throughput
-- Completions per task type in the 10-second slots that started within the last minute
-- (task_throughput: the metrics trigger; task_flow: eqflow_report_and_claim).
SELECT task_type, sum(completed)::bigint
FROM (SELECT task_type, completed FROM task_throughput WHERE slot_start > now() - interval '60 seconds'
      UNION ALL
      SELECT task_type, slot_completed FROM task_flow WHERE slot_start > now() - interval '60 seconds') recent
GROUP BY task_type ORDER BY task_type;

-- name: status_pools
-- Live pools with their heartbeat age in seconds (the database's clock).
SELECT name || '-' || pool_id, host, n_workers, status, stop_requested, task_types,
       extract(epoch FROM now() - heartbeat_at)::float8
FROM pools WHERE status IN ('starting', 'running')
ORDER BY pool_id LIMIT %(limit)s;

-- name: status_failures
-- The newest failed runs (of one experiment, or of all), errors cut to max_chars.
SELECT at, task_id, exp_id, task_type, final, left(error, %(max_chars)s)
FROM recent_task_failures
WHERE %(exp_id)s::text IS NULL OR exp_id = %(exp_id)s::text
ORDER BY failure_id DESC LIMIT %(limit)s;

-- name: status_experiments
-- Running experiments (or the one asked for), each with its newest 'progress' event.
SELECT e.exp_id, e.status, p.at, p.data
FROM (SELECT exp_id, status, created_at FROM experiments
      WHERE (%(exp_id)s::text IS NULL AND status = 'running') OR exp_id = %(exp_id)s::text
      ORDER BY created_at DESC LIMIT %(limit)s) e
LEFT JOIN LATERAL (SELECT at, data FROM experiment_events ev
                   WHERE ev.exp_id = e.exp_id AND ev.kind = 'progress'
                   ORDER BY ev.event_id DESC LIMIT 1) p ON true
ORDER BY e.created_at DESC;

-- name: status_experiment_tasks
-- One experiment's task counts per type and state (its rows only: tasks_exp_idx).
SELECT task_type, status::text, count(*)
FROM tasks WHERE exp_id = %(exp_id)s
GROUP BY task_type, status ORDER BY task_type, status;

-- name: dashboard_progress
-- The experiment's progress events, thinned to about %(points)s spread over the whole run (and
-- the latest always): one pass over its progress events (experiment_events_exp_idx).
SELECT extract(epoch FROM at)::float8, data
FROM (SELECT event_id, at, data, row_number() OVER (ORDER BY event_id DESC) - 1 AS back,
             count(*) OVER () AS n
      FROM experiment_events WHERE exp_id = %(exp_id)s AND kind = 'progress') p
WHERE back %% greatest(n / %(points)s, 1) = 0
ORDER BY event_id;
