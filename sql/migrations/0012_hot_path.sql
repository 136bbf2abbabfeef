-- eqflow schema, version 12: a report-and-claim that is not planned again for every task
-- (issue #13).
--
-- report_and_claim (a worker's one statement per task at steady state) was sent as a prepared
-- statement, but PostgreSQL planned it again on every execution: its generic plan is costed
-- for arrays and a LIMIT of unknown size, so the planner always preferred a custom plan, and
-- planning the two-update statement took about a third of its server time (pg_stat_statements:
-- 320 of 960 us per batch-1 call). In a PL/pgSQL function its statements are prepared once per
-- connection, and plan_cache_mode keeps their generic plans: index scans whatever the sizes,
-- which are the plans every size gets anyway. A generic plan does not know how many tasks a
-- call reports, so the report also names them by primary key (t.task_id = ANY(...)): looking
-- them up is then never costed above reading every running task through the lease index
-- (O(running) per report, which a generic plan built while few tasks ran would otherwise keep).

-- What a report accepted, kept in the session setting eqflow.done for notify_done (sql/queries.sql)
-- to announce right after the commit: one message per 400 tasks of one experiment, as
-- eqflow_announce (0001) chunks them. Returns the setting's new value.
CREATE FUNCTION eqflow_keep_done(task_ids bigint[], exp_ids text[]) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    msgs text;
BEGIN
    SELECT coalesce(array_agg(c.msg)::text, '{}') INTO msgs
    FROM (SELECT f.exp_id || '|' || string_agg(f.task_id::text, ',' ORDER BY f.task_id) AS msg
          FROM (SELECT u.exp_id, u.task_id,
                       (row_number() OVER (PARTITION BY u.exp_id ORDER BY u.task_id) - 1) / 400 AS part
                FROM unnest(exp_ids, task_ids) AS u(exp_id, task_id)) f
          GROUP BY f.exp_id, f.part) c;
    RETURN set_config('eqflow.done', msgs, false);
END;
$$;

CREATE FUNCTION eqflow_report_and_claim(
    p_task_ids bigint[], p_claim_ids bigint[], p_results text[],  -- the reports (may be empty)
    p_task_types integer[], p_n integer, p_pool text, p_lease_s double precision)
RETURNS TABLE (claimed boolean, task_id bigint, exp_id text, task_type integer, priority integer,
               payload text, tag text, attempts integer, claim_id bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    -- The completions are announced by notify_done after the commit (migration 0010).
    PERFORM set_config('eqflow.notify_done', 'deferred', true);
    -- The two branches differ only in the claim's type predicate. One type must be written
    -- "= p_task_types[1]": a generic plan cannot know that "= ANY(...)" will hold one element,
    -- and for several it sorts every queued task of those types instead of reading the queue
    -- index in order. One statement each (not a shared report statement): the statement
    -- triggers (metrics, announcements) then fire once per call.
    IF cardinality(p_task_types) = 1 THEN
        RETURN QUERY
        WITH reported AS (
            UPDATE tasks t
            SET status = 'complete', result = r.result, error = NULL, finished_at = now(),
                lease_expires_at = NULL
            FROM unnest(p_task_ids, p_claim_ids, p_results) AS r(task_id, claim_id, result)
            WHERE t.task_id = r.task_id AND t.task_id = ANY(p_task_ids) AND t.status = 'running'
              AND (r.claim_id IS NULL OR t.claim_id = r.claim_id)
            RETURNING t.task_id, t.exp_id),
        claimed AS (
            UPDATE tasks t
            SET status = 'running', pool = p_pool, attempts = t.attempts + 1,
                claim_id = nextval('eqflow_claim_seq'),
                lease_expires_at = now() + make_interval(secs => p_lease_s), started_at = now()
            WHERE t.task_id = ANY(ARRAY(
                SELECT q.task_id FROM tasks q
                WHERE q.status = 'queued' AND q.task_type = p_task_types[1]
                ORDER BY q.priority DESC, q.task_id
                LIMIT p_n
                FOR UPDATE SKIP LOCKED))
            RETURNING t.task_id, t.exp_id, t.task_type, t.priority, t.payload, t.tag, t.attempts, t.claim_id),
        told AS MATERIALIZED (SELECT eqflow_keep_done(array_agg(reported.task_id), array_agg(reported.exp_id))
                              FROM reported)
        SELECT false, r.task_id, r.exp_id, NULL::integer, NULL::integer, NULL::text, NULL::text,
               NULL::integer, NULL::bigint
        FROM reported r, told
        UNION ALL
        SELECT true, c.* FROM claimed c;
    ELSE
        RETURN QUERY
        WITH reported AS (
            UPDATE tasks t
            SET status = 'complete', result = r.result, error = NULL, finished_at = now(),
                lease_expires_at = NULL
            FROM unnest(p_task_ids, p_claim_ids, p_results) AS r(task_id, claim_id, result)
            WHERE t.task_id = r.task_id AND t.task_id = ANY(p_task_ids) AND t.status = 'running'
              AND (r.claim_id IS NULL OR t.claim_id = r.claim_id)
            RETURNING t.task_id, t.exp_id),
        claimed AS (
            UPDATE tasks t
            SET status = 'running', pool = p_pool, attempts = t.attempts + 1,
                claim_id = nextval('eqflow_claim_seq'),
                lease_expires_at = now() + make_interval(secs => p_lease_s), started_at = now()
            WHERE t.task_id = ANY(ARRAY(
                SELECT q.task_id FROM tasks q
                WHERE q.status = 'queued' AND q.task_type = ANY(p_task_types)
                ORDER BY q.priority DESC, q.task_id
                LIMIT p_n
                FOR UPDATE SKIP LOCKED))
            RETURNING t.task_id, t.exp_id, t.task_type, t.priority, t.payload, t.tag, t.attempts, t.claim_id),
        told AS MATERIALIZED (SELECT eqflow_keep_done(array_agg(reported.task_id), array_agg(reported.exp_id))
                              FROM reported)
        SELECT false, r.task_id, r.exp_id, NULL::integer, NULL::integer, NULL::text, NULL::text,
               NULL::integer, NULL::bigint
        FROM reported r, told
        UNION ALL
        SELECT true, c.* FROM claimed c;
    END IF;
END;
$$;


-- The latency histogram's bucket as one expression: the function of 0007 was a query, planned
-- again on every call from the metrics trigger (30 us per completed task); a SQL-standard body
-- of one expression is inlined. The same upper bounds, the same text.
CREATE OR REPLACE FUNCTION eqflow_latency_le(seconds double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN seconds <= 0.1 THEN '0.1' WHEN seconds <= 0.25 THEN '0.25' WHEN seconds <= 0.5 THEN '0.5'
            WHEN seconds <= 1 THEN '1' WHEN seconds <= 2.5 THEN '2.5' WHEN seconds <= 5 THEN '5'
            WHEN seconds <= 10 THEN '10' WHEN seconds <= 30 THEN '30' WHEN seconds <= 60 THEN '60'
            WHEN seconds <= 120 THEN '120' WHEN seconds <= 300 THEN '300' WHEN seconds <= 600 THEN '600'
            WHEN seconds <= 1800 THEN '1800' WHEN seconds <= 3600 THEN '3600' WHEN seconds <= 7200 THEN '7200'
            WHEN seconds <= 21600 THEN '21600' WHEN seconds <= 86400 THEN '86400' ELSE '+Inf' END;
