-- eqflow schema, version 7: figures for /metrics and `eqflow status` that cost O(1) to read,
-- whatever the size of tasks. Statement-level triggers with transition tables keep them: one
-- aggregate per statement (a claim or report of a whole batch is one upsert, not one per row).
--
-- Why triggers and not GROUP BY at scrape time: counting tasks by type and state over a million
-- rows is a full scan (~100s of ms) on every scrape. Why not row-count estimates (reltuples):
-- the states of a queue change faster than ANALYZE runs, and counters must be exact. Why not
-- counters kept by the service: pools talk to the database directly; the service sees little.
--
-- Contention: every counter row is split into shards (the backend's pid modulo 32); two pools'
-- claims or reports touch the same row only when their backends share a shard. A scrape sums
-- the shards. Each statement upserts its rows in key order.

CREATE TABLE task_metrics (
    metric     text NOT NULL,      -- tasks | completed | failed | run_failures | lease_rescues |
                                   -- latency_bucket | latency_sum | scaling_decisions
    task_type  integer NOT NULL,
    label      text NOT NULL DEFAULT '',  -- tasks: the state; latency_bucket: its upper bound
                                          -- (not cumulative); scaling_decisions: the action
    shard      smallint NOT NULL,
    value      double precision NOT NULL,
    PRIMARY KEY (metric, task_type, label, shard)
);

-- Completions in 10-second slots of a 2-minute ring (slot = epoch / 10 mod 12); a slot is
-- reset when its time comes round again. Throughput over the last minute reads 12 x shards rows.
CREATE TABLE task_throughput (
    task_type   integer NOT NULL,
    slot        smallint NOT NULL,
    shard       smallint NOT NULL,
    slot_start  timestamptz NOT NULL,
    completed   bigint NOT NULL,
    PRIMARY KEY (task_type, slot, shard)
);

-- The latest failed runs (reported or lease lost), the newest 200 kept.
CREATE TABLE recent_task_failures (
    failure_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    task_id     bigint NOT NULL,
    exp_id      text NOT NULL,
    task_type   integer NOT NULL,
    final       boolean NOT NULL,  -- failed for good (else requeued)
    error       text
);
CREATE INDEX recent_task_failures_exp_idx ON recent_task_failures (exp_id, failure_id);

-- Counting live pools reads the live ones only, not every pool ever started.
CREATE INDEX pools_live_idx ON pools (heartbeat_at) WHERE status IN ('starting', 'running');

-- The latency histogram's bucket for a number of seconds: its upper bound as text.
CREATE FUNCTION eqflow_latency_le(seconds double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce((SELECT min(b)::text
                     FROM unnest('{0.1,0.25,0.5,1,2.5,5,10,30,60,120,300,600,1800,3600,7200,21600,86400}'::float8[]) b
                     WHERE b >= seconds), '+Inf')
$$;

CREATE FUNCTION eqflow_metrics_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_metrics AS m (metric, task_type, label, shard, value)
    SELECT 'tasks', task_type, status::text, pg_backend_pid() % 32, count(*)
    FROM new_rows GROUP BY task_type, status ORDER BY task_type, status::text
    ON CONFLICT (metric, task_type, label, shard) DO UPDATE SET value = m.value + EXCLUDED.value;
    RETURN NULL;
END;
$$;

CREATE FUNCTION eqflow_metrics_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_metrics AS m (metric, task_type, label, shard, value)
    SELECT 'tasks', task_type, status::text, pg_backend_pid() % 32, -count(*)
    FROM old_rows GROUP BY task_type, status ORDER BY task_type, status::text
    ON CONFLICT (metric, task_type, label, shard) DO UPDATE SET value = m.value + EXCLUDED.value;
    RETURN NULL;
END;
$$;

-- Only rows whose state, type or failure count changed contribute (a lease extension or a
-- reprioritization costs one empty join). A lost lease is told apart from a reported failure
-- by the error rescue_expired writes ('lease expired (pool ...').
CREATE FUNCTION eqflow_metrics_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    shard_no smallint := pg_backend_pid() % 32;
    slot_no bigint := floor(extract(epoch FROM now()) / 10)::bigint;
    last_failure bigint;
BEGIN
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
    IF last_failure IS NOT NULL THEN
        DELETE FROM recent_task_failures WHERE failure_id <= last_failure - 200;
    END IF;
    RETURN NULL;
END;
$$;

-- TRUNCATE tasks (the benchmark's reset) starts every task figure again from zero.
CREATE FUNCTION eqflow_metrics_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_metrics WHERE metric <> 'scaling_decisions';
    DELETE FROM task_throughput;
    DELETE FROM recent_task_failures;
    RETURN NULL;
END;
$$;

CREATE FUNCTION eqflow_metrics_decisions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM task_metrics WHERE metric = 'scaling_decisions';
        RETURN NULL;
    END IF;
    INSERT INTO task_metrics AS m (metric, task_type, label, shard, value)
    SELECT 'scaling_decisions', task_type, action, pg_backend_pid() % 32, count(*)
    FROM new_rows GROUP BY task_type, action ORDER BY task_type, action
    ON CONFLICT (metric, task_type, label, shard) DO UPDATE SET value = m.value + EXCLUDED.value;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_metrics_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION eqflow_metrics_insert();
CREATE TRIGGER tasks_metrics_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION eqflow_metrics_update();
CREATE TRIGGER tasks_metrics_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION eqflow_metrics_delete();
CREATE TRIGGER tasks_metrics_truncate AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION eqflow_metrics_truncate();
CREATE TRIGGER scaling_decisions_metrics AFTER INSERT ON scaling_decisions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION eqflow_metrics_decisions();
CREATE TRIGGER scaling_decisions_metrics_truncate AFTER TRUNCATE ON scaling_decisions
    FOR EACH STATEMENT EXECUTE FUNCTION eqflow_metrics_decisions();

-- The figures of what is already there (the triggers above hold writers off until commit).
-- Lease rescues and the last minute's throughput start from zero.
INSERT INTO task_metrics (metric, task_type, label, shard, value)
SELECT 'tasks', task_type, status::text, 0, count(*) FROM tasks GROUP BY task_type, status
UNION ALL
SELECT 'completed', task_type, '', 0, count(*) FROM tasks WHERE status = 'complete' GROUP BY task_type
UNION ALL
SELECT 'failed', task_type, '', 0, count(*) FROM tasks WHERE status = 'failed' GROUP BY task_type
UNION ALL
SELECT 'run_failures', task_type, '', 0, sum(failures) FROM tasks GROUP BY task_type HAVING sum(failures) > 0
UNION ALL
SELECT 'latency_bucket', task_type, le, 0, count(*)
FROM (SELECT task_type, eqflow_latency_le(extract(epoch FROM finished_at - created_at)::float8) AS le
      FROM tasks WHERE status = 'complete') done
GROUP BY task_type, le
UNION ALL
SELECT 'latency_sum', task_type, '', 0, sum(extract(epoch FROM finished_at - created_at)::float8)
FROM tasks WHERE status = 'complete' GROUP BY task_type
UNION ALL
SELECT 'scaling_decisions', task_type, action, 0, count(*) FROM scaling_decisions GROUP BY task_type, action;
