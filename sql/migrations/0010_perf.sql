-- eqflow schema, version 10: wake-ups that cost the hot paths less (issue #13).
--
-- A transaction that notifies holds PostgreSQL's global notify lock from its pre-commit until
-- its commit is done, WAL flush included: every notifying transaction commits one after the
-- other, whatever the number of clients. With eqflow_done sent from inside each report, four
-- workers reporting one task each committed at the rate of one client (measured: a batch-1 drain
-- at 270-340 tasks/s with it, 690-700 without, pgbench -N at 1,300-2,100 TPS on the same server).
--
-- So a statement may now tell the trigger, through the transaction-local setting
-- eqflow.notify_done, what it takes care of:
--   'deferred': it announces its finished tasks itself, after its commit, in a transaction that
--               does not wait for its flush (notify_done in sql/queries.sql): report_results,
--               report_and_claim_*. eqflow_queued is still sent here.
--   'none':     it changes no task's state and announces nothing (a reprioritization: a queued
--               task that stays queued is not new work).
-- Unset (every other statement, and any writer that does not know of it) behaves as before.

CREATE OR REPLACE FUNCTION eqflow_announce() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    typ integer;
    chunk record;
    mode text := coalesce(current_setting('eqflow.notify_done', true), '');
BEGIN
    IF mode = 'none' THEN
        RETURN NULL;
    END IF;
    FOR typ IN SELECT DISTINCT task_type FROM changed WHERE status = 'queued' LOOP
        PERFORM pg_notify('eqflow_queued', typ::text);
    END LOOP;
    IF mode = 'deferred' THEN
        RETURN NULL;
    END IF;
    FOR chunk IN
        SELECT exp_id, string_agg(task_id::text, ',') AS ids
        FROM (SELECT exp_id, task_id, (row_number() OVER (PARTITION BY exp_id ORDER BY task_id) - 1) / 400 AS part
              FROM changed
              WHERE status IN ('complete', 'failed', 'canceled')) finished
        GROUP BY exp_id, part
    LOOP
        PERFORM pg_notify('eqflow_done', chunk.exp_id || '|' || chunk.ids);
    END LOOP;
    RETURN NULL;
END;
$$;

-- The metrics trigger of 0007, the same figures, with two changes: a reprioritization (mode
-- 'none', above) skips it, and a large statement's figures are planned for its size (below).
CREATE OR REPLACE FUNCTION eqflow_metrics_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    shard_no smallint := pg_backend_pid() % 32;
    slot_no bigint := floor(extract(epoch FROM now()) / 10)::bigint;
    last_failure bigint;
BEGIN
    IF coalesce(current_setting('eqflow.notify_done', true), '') = 'none' THEN
        RETURN NULL;  -- a reprioritization: no state, type or failure count changes
    END IF;
    -- A statement's plan is kept for the session and reused whatever the sizes of the transition
    -- tables. Built for a huge statement (a reprioritization of 100,000 tasks: hashes sized for
    -- 50 million estimated rows) it made every later one-row claim on that connection take
    -- 0.6-0.9 s; built for one row and reused for a huge one it would be a nested loop. So up to
    -- 100 rows the cached plan (always built for a small statement) runs; a larger statement is
    -- planned for its own size (EXECUTE: about 1 ms of planning, spread over its rows).
    IF (SELECT count(*) FROM (SELECT 1 FROM new_rows LIMIT 101) few) <= 100 THEN
        WITH ch AS (
            SELECT n.task_id, n.exp_id, o.task_type AS otype, o.status AS ostatus, n.task_type AS ntype,
                   n.status AS nstatus, n.failures - o.failures AS more_failures, n.error,
                   n.status = 'complete' AND o.status <> 'complete' AS completed,
                   extract(epoch FROM n.finished_at - n.created_at)::float8 AS latency
            FROM old_rows o JOIN new_rows n USING (task_id)
            WHERE o.status <> n.status OR o.task_type <> n.task_type OR o.failures <> n.failures),
        deltas AS (
            SELECT e.metric, e.task_type, e.label, e.v
            FROM ch CROSS JOIN LATERAL (VALUES
                ('tasks', ch.otype, ch.ostatus::text, -1.0::float8, ch.ostatus <> ch.nstatus OR ch.otype <> ch.ntype),
                ('tasks', ch.ntype, ch.nstatus::text, 1.0::float8, ch.ostatus <> ch.nstatus OR ch.otype <> ch.ntype),
                ('completed', ch.ntype, '', 1.0::float8, ch.completed),
                ('failed', ch.ntype, '', 1.0::float8, ch.nstatus = 'failed' AND ch.ostatus <> 'failed'),
                ('run_failures', ch.ntype, '', ch.more_failures::float8, ch.more_failures > 0),
                ('lease_rescues', ch.ntype, '', 1.0::float8,
                 ch.more_failures > 0 AND ch.error LIKE 'lease expired (pool %'),
                ('latency_bucket', ch.ntype, CASE WHEN ch.completed THEN eqflow_latency_le(ch.latency) END,
                 1.0::float8, ch.completed),
                ('latency_sum', ch.ntype, '', ch.latency, ch.completed)
            ) AS e(metric, task_type, label, v, keep)
            WHERE e.keep),
        counted AS (
            INSERT INTO task_metrics AS m (metric, task_type, label, shard, value)
            SELECT metric, task_type, label, shard_no, sum(v) FROM deltas
            GROUP BY metric, task_type, label ORDER BY metric, task_type, label
            ON CONFLICT (metric, task_type, label, shard) DO UPDATE SET value = m.value + EXCLUDED.value
            RETURNING 1),
        ring AS (
            INSERT INTO task_throughput AS t (task_type, slot, shard, slot_start, completed)
            SELECT ntype, (slot_no % 12)::smallint, shard_no, to_timestamp(slot_no * 10), count(*)
            FROM ch WHERE completed GROUP BY ntype ORDER BY ntype
            ON CONFLICT (task_type, slot, shard) DO UPDATE
            SET completed = CASE WHEN t.slot_start = EXCLUDED.slot_start THEN t.completed + EXCLUDED.completed
                                 ELSE EXCLUDED.completed END,
                slot_start = EXCLUDED.slot_start
            RETURNING 1),
        failed_runs AS (
            INSERT INTO recent_task_failures (task_id, exp_id, task_type, final, error)
            SELECT task_id, exp_id, ntype, nstatus = 'failed', left(error, 1000)
            FROM ch WHERE more_failures > 0 ORDER BY task_id
            RETURNING failure_id)
        SELECT max(failure_id) INTO last_failure FROM failed_runs;
    ELSE
        EXECUTE $q$
            WITH ch AS (
                SELECT n.task_id, n.exp_id, o.task_type AS otype, o.status AS ostatus, n.task_type AS ntype,
                       n.status AS nstatus, n.failures - o.failures AS more_failures, n.error,
                       n.status = 'complete' AND o.status <> 'complete' AS completed,
                       extract(epoch FROM n.finished_at - n.created_at)::float8 AS latency
                FROM old_rows o JOIN new_rows n USING (task_id)
                WHERE o.status <> n.status OR o.task_type <> n.task_type OR o.failures <> n.failures),
            deltas AS (
                SELECT e.metric, e.task_type, e.label, e.v
                FROM ch CROSS JOIN LATERAL (VALUES
                    ('tasks', ch.otype, ch.ostatus::text, -1.0::float8, ch.ostatus <> ch.nstatus OR ch.otype <> ch.ntype),
                    ('tasks', ch.ntype, ch.nstatus::text, 1.0::float8, ch.ostatus <> ch.nstatus OR ch.otype <> ch.ntype),
                    ('completed', ch.ntype, '', 1.0::float8, ch.completed),
                    ('failed', ch.ntype, '', 1.0::float8, ch.nstatus = 'failed' AND ch.ostatus <> 'failed'),
                    ('run_failures', ch.ntype, '', ch.more_failures::float8, ch.more_failures > 0),
                    ('lease_rescues', ch.ntype, '', 1.0::float8,
                     ch.more_failures > 0 AND ch.error LIKE 'lease expired (pool %'),
                    ('latency_bucket', ch.ntype, CASE WHEN ch.completed THEN eqflow_latency_le(ch.latency) END,
                     1.0::float8, ch.completed),
                    ('latency_sum', ch.ntype, '', ch.latency, ch.completed)
                ) AS e(metric, task_type, label, v, keep)
                WHERE e.keep),
            counted AS (
                INSERT INTO task_metrics AS m (metric, task_type, label, shard, value)
                SELECT metric, task_type, label, $1, sum(v) FROM deltas
                GROUP BY metric, task_type, label ORDER BY metric, task_type, label
                ON CONFLICT (metric, task_type, label, shard) DO UPDATE SET value = m.value + EXCLUDED.value
                RETURNING 1),
            ring AS (
                INSERT INTO task_throughput AS t (task_type, slot, shard, slot_start, completed)
                SELECT ntype, ($2 % 12)::smallint, $1, to_timestamp($2 * 10), count(*)
                FROM ch WHERE completed GROUP BY ntype ORDER BY ntype
                ON CONFLICT (task_type, slot, shard) DO UPDATE
                SET completed = CASE WHEN t.slot_start = EXCLUDED.slot_start THEN t.completed + EXCLUDED.completed
                                     ELSE EXCLUDED.completed END,
                    slot_start = EXCLUDED.slot_start
                RETURNING 1),
            failed_runs AS (
                INSERT INTO recent_task_failures (task_id, exp_id, task_type, final, error)
                SELECT task_id, exp_id, ntype, nstatus = 'failed', left(error, 1000)
                FROM ch WHERE more_failures > 0 ORDER BY task_id
                RETURNING failure_id)
            SELECT max(failure_id) FROM failed_runs
        $q$ INTO last_failure USING shard_no, slot_no;
    END IF;
    IF last_failure IS NOT NULL THEN
        DELETE FROM recent_task_failures WHERE failure_id <= last_failure - 200;
    END IF;
    RETURN NULL;
END;
$$;
