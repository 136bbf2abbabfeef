-- eqflow schema, version 13: the hot path keeps its own figures, in one row (issue #13).
--
-- The metrics trigger of 0007/0010 took 170-190 us of server CPU per batch-1 report-and-claim,
-- a quarter of the server's share of a task (bench_end_to_end, 4 workers, trigger on against
-- off): it joins the old and new transition tables to learn what changed, then upserts six
-- counter rows (tasks running/complete/queued, completed, latency bucket, latency sum) and a
-- throughput slot. eqflow_report_and_claim knows what it changed without asking: its reports
-- take running tasks to complete, its claims queued tasks to running. So it now counts those
-- itself, into task_flow, in one upsert of one row per task type and latency bucket (a batch-1
-- call: one row), and the trigger does not fire for its statements (WHEN eqflow.counted is
-- set, which the function sets around its statement only). Every other change of a task keeps
-- the trigger and task_metrics. The readers (metrics_counters, metrics_throughput in
-- sql/queries.sql) add both tables up: the figures are the same, to the task.

-- Completions and claims counted by eqflow_report_and_claim. A row holds what one shard (the
-- backend's pid modulo 32, as task_metrics) counted for a task type, a latency bucket and a
-- 10-second throughput slot of the 2-minute ring of 0007: claims go to the row of the call's
-- first bucket for their type (bucket 0: a call that completed nothing of that type).
CREATE TABLE task_flow (
    task_type       integer NOT NULL,
    shard           smallint NOT NULL,
    slot            smallint NOT NULL,  -- epoch / 10 mod 12
    bucket          smallint NOT NULL,  -- 1-based index into eqflow_latency_labels(); 0: none
    claimed         bigint NOT NULL,    -- queued -> running, since the row was made
    completed       bigint NOT NULL,    -- running -> complete, since the row was made
    latency_sum     double precision NOT NULL,  -- seconds from submit to complete, summed
    slot_start      timestamptz NOT NULL,       -- the slot's current 10 seconds
    slot_completed  bigint NOT NULL,            -- completions within them
    PRIMARY KEY (task_type, shard, slot, bucket)
);

-- The upper bounds of the latency histogram of 0007 (eqflow_latency_le), in bucket order.
CREATE FUNCTION eqflow_latency_labels() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '{0.1,0.25,0.5,1,2.5,5,10,30,60,120,300,600,1800,3600,7200,21600,86400,+Inf}'::text[];

-- The bucket of a latency: its 1-based index into eqflow_latency_labels() (one expression,
-- inlined into the statement that calls it).
CREATE FUNCTION eqflow_latency_bucket(seconds double precision) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN seconds <= 0.1 THEN 1 WHEN seconds <= 0.25 THEN 2 WHEN seconds <= 0.5 THEN 3
            WHEN seconds <= 1 THEN 4 WHEN seconds <= 2.5 THEN 5 WHEN seconds <= 5 THEN 6
            WHEN seconds <= 10 THEN 7 WHEN seconds <= 30 THEN 8 WHEN seconds <= 60 THEN 9
            WHEN seconds <= 120 THEN 10 WHEN seconds <= 300 THEN 11 WHEN seconds <= 600 THEN 12
            WHEN seconds <= 1800 THEN 13 WHEN seconds <= 3600 THEN 14 WHEN seconds <= 7200 THEN 15
            WHEN seconds <= 21600 THEN 16 WHEN seconds <= 86400 THEN 17 ELSE 18 END::smallint;

-- The metrics trigger skips the statements that counted themselves.
DROP TRIGGER tasks_metrics_update ON tasks;
CREATE TRIGGER tasks_metrics_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT WHEN (current_setting('eqflow.counted', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION eqflow_metrics_update();

-- TRUNCATE tasks (the benchmark's reset) starts every task figure again from zero: task_flow too.
CREATE OR REPLACE FUNCTION eqflow_metrics_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_metrics WHERE metric <> 'scaling_decisions';
    DELETE FROM task_throughput;
    DELETE FROM task_flow;
    DELETE FROM recent_task_failures;
    RETURN NULL;
END;
$$;

-- eqflow_report_and_claim of 0012, the same reports, claims and result rows, now counting
-- them. The claim's pick is a statement of its own, so that the one statement that reports,
-- claims and counts is written once: one task type must be picked with "= p_task_types[1]"
-- (a generic plan cannot know that "= ANY(...)" will hold one element, and for several types
-- it sorts every queued task of those types instead of reading the queue index in order).
-- The picked tasks stay locked (FOR UPDATE) until the commit, as they were inside one statement.
CREATE OR REPLACE FUNCTION eqflow_report_and_claim(
    p_task_ids bigint[], p_claim_ids bigint[], p_results text[],  -- the reports (may be empty)
    p_task_types integer[], p_n integer, p_pool text, p_lease_s double precision)
RETURNS TABLE (claimed boolean, task_id bigint, exp_id text, task_type integer, priority integer,
               payload text, tag text, attempts integer, claim_id bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    picked bigint[] := '{}';
    shard_no smallint := pg_backend_pid() % 32;
    slot_no bigint := floor(extract(epoch FROM now()) / 10)::bigint;
BEGIN
    IF p_n > 0 AND cardinality(p_task_types) = 1 THEN
        picked := ARRAY(SELECT q.task_id FROM tasks q
                        WHERE q.status = 'queued' AND q.task_type = p_task_types[1]
                        ORDER BY q.priority DESC, q.task_id LIMIT p_n FOR UPDATE SKIP LOCKED);
    ELSIF p_n > 0 THEN
        picked := ARRAY(SELECT q.task_id FROM tasks q
                        WHERE q.status = 'queued' AND q.task_type = ANY(p_task_types)
                        ORDER BY q.priority DESC, q.task_id LIMIT p_n FOR UPDATE SKIP LOCKED);
    END IF;
    -- The completions are announced by notify_done after the commit (migration 0010); the
    -- counts are kept below, not by the metrics trigger. Both settings end with the statement.
    PERFORM set_config('eqflow.notify_done', 'deferred', true), set_config('eqflow.counted', 'on', true);
    RETURN QUERY
    WITH reported AS (
        UPDATE tasks t
        SET status = 'complete', result = r.result, error = NULL, finished_at = now(),
            lease_expires_at = NULL
        FROM unnest(p_task_ids, p_claim_ids, p_results) AS r(task_id, claim_id, result)
        WHERE t.task_id = r.task_id AND t.task_id = ANY(p_task_ids) AND t.status = 'running'
          AND (r.claim_id IS NULL OR t.claim_id = r.claim_id)
        RETURNING t.task_id, t.exp_id, t.task_type, extract(epoch FROM now() - t.created_at)::float8 AS latency),
    claimed AS (
        UPDATE tasks t
        SET status = 'running', pool = p_pool, attempts = t.attempts + 1,
            claim_id = nextval('eqflow_claim_seq'),
            lease_expires_at = now() + make_interval(secs => p_lease_s), started_at = now()
        WHERE t.task_id = ANY(picked)  -- by primary key only: a status test would let a generic plan
                                       -- read the queued tasks' index instead
        RETURNING t.task_id, t.exp_id, t.task_type, t.priority, t.payload, t.tag, t.attempts, t.claim_id),
    done AS (
        SELECT d.task_type, eqflow_latency_bucket(d.latency) AS bucket, count(*) AS n, sum(d.latency) AS latency,
               row_number() OVER (PARTITION BY d.task_type ORDER BY eqflow_latency_bucket(d.latency)) AS nth
        FROM reported d GROUP BY 1, 2),
    took AS (SELECT c.task_type, count(*) AS n, 1::bigint AS nth FROM claimed c GROUP BY 1),
    counted AS (
        INSERT INTO task_flow AS f (task_type, shard, slot, bucket, claimed, completed, latency_sum,
                                    slot_start, slot_completed)
        SELECT coalesce(d.task_type, k.task_type), shard_no, (slot_no % 12)::smallint, coalesce(d.bucket, 0),
               coalesce(k.n, 0), coalesce(d.n, 0), coalesce(d.latency, 0), to_timestamp(slot_no * 10),
               coalesce(d.n, 0)
        FROM done d FULL JOIN took k ON k.task_type = d.task_type AND k.nth = d.nth
        ORDER BY 1, 4
        ON CONFLICT (task_type, shard, slot, bucket) DO UPDATE
        SET claimed = f.claimed + EXCLUDED.claimed, completed = f.completed + EXCLUDED.completed,
            latency_sum = f.latency_sum + EXCLUDED.latency_sum,
            slot_completed = CASE WHEN f.slot_start = EXCLUDED.slot_start
                                  THEN f.slot_completed + EXCLUDED.slot_completed
                                  ELSE EXCLUDED.slot_completed END,
            slot_start = EXCLUDED.slot_start),
    told AS MATERIALIZED (SELECT eqflow_keep_done(array_agg(reported.task_id), array_agg(reported.exp_id))
                          FROM reported)
    SELECT false, r.task_id, r.exp_id, NULL::integer, NULL::integer, NULL::text, NULL::text,
           NULL::integer, NULL::bigint
    FROM reported r, told
    UNION ALL
    SELECT true, c.* FROM claimed c;
    PERFORM set_config('eqflow.notify_done', '', true), set_config('eqflow.counted', '', true);
END;
$$;
