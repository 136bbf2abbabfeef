-- eqflow schema, version 14: a report's rows are found by its join alone.
--
-- eqflow_report_and_claim (0013) found the reported rows by "t.task_id = r.task_id AND
-- t.task_id = ANY(p_task_ids)". The second test adds nothing, and on a generic plan made while
-- the statistics said few tasks were running (a burst of claims since the last ANALYZE), the
-- planner read the running tasks' index and tested each against the whole array: O(running x
-- reported). 8,000 tasks reported with 8,000 running: 597 ms with it, 154 ms without (EXPLAIN
-- ANALYZE, the same plan otherwise); with fresh statistics both plans read the primary key and
-- take the same time. The function is otherwise 0013's, written out whole (a migration is
-- never edited).

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
        WHERE t.task_id = r.task_id AND t.status = 'running'  -- no "= ANY(p_task_ids)": migration 0014
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
