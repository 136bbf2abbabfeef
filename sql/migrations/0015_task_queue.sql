-- eqflow schema, version 15: the queue's order lives in a narrow table of its own (issue #13).
--
-- A task's priority was a column of tasks and a key of the claim index (tasks_queue_idx), so
-- reprioritizing a queued task wrote a new version of its whole row and an entry in each of
-- the table's indexes: 5 WAL records and about 425 bytes per task, about 10 us of server time
-- (EXPLAIN (ANALYZE, WAL) of 5,000 changes). An ME reprioritizes every queued task each time
-- its model learns something, so this is its commonest write after submit. The order now
-- lives in task_queue: a row of three numbers for each queued task, with its claim index and
-- primary key. A reprioritization writes only that row (a bare UPDATE of 5,000 of them: 23-29
-- ms here against 35-46 ms for the same change of tasks), tasks keeps what does not change
-- while a task waits, and tasks.priority is the priority the task had when it last left the
-- queue (claimed or canceled); while it is queued, task_queue's is the one that counts.
--
-- Who keeps the two tables in step:
-- * rows entering the queue (submit, retry, release, a lost lease) get their task_queue row
--   from the triggers below, whichever statement wrote them;
-- * rows leaving it (claim, cancel) are taken out of task_queue by the statement itself,
--   before it touches tasks: every writer locks a queued task's task_queue row first and its
--   tasks row second, so a claim and a cancel of the same task never wait on each other in a
--   cycle. The update trigger also removes rows that left the queue by other means (SQL
--   written by hand); for the statements above it finds nothing left to remove.
-- * TRUNCATE and DELETE of tasks take task_queue's rows with them.

CREATE TABLE task_queue (
    task_id    bigint PRIMARY KEY,
    task_type  integer NOT NULL,
    priority   integer NOT NULL
) WITH (
    -- Rows live from submit to claim: vacuum as tasks does (0011).
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 1000
);
CREATE INDEX task_queue_claim_idx ON task_queue (task_type, priority DESC, task_id);

INSERT INTO task_queue (task_id, task_type, priority)
SELECT task_id, task_type, priority FROM tasks WHERE status = 'queued';
DROP INDEX tasks_queue_idx;

CREATE FUNCTION eqflow_queue_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_queue (task_id, task_type, priority)
    SELECT n.task_id, n.task_type, n.priority FROM new_rows n WHERE n.status = 'queued';
    RETURN NULL;
END;
$$;

CREATE FUNCTION eqflow_queue_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH ch AS MATERIALIZED (
        SELECT n.task_id, n.task_type, n.priority, o.status = 'queued' AS was_queued,
               n.status = 'queued' AS now_queued
        FROM old_rows o JOIN new_rows n USING (task_id)
        WHERE (o.status = 'queued') <> (n.status = 'queued')
           OR (n.status = 'queued' AND o.priority <> n.priority)),
    entered AS (
        INSERT INTO task_queue AS q (task_id, task_type, priority)
        SELECT ch.task_id, ch.task_type, ch.priority FROM ch WHERE ch.now_queued
        ON CONFLICT (task_id) DO UPDATE SET priority = EXCLUDED.priority)
    DELETE FROM task_queue q USING ch WHERE q.task_id = ch.task_id AND ch.was_queued AND NOT ch.now_queued;
    RETURN NULL;
END;
$$;

CREATE FUNCTION eqflow_queue_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_queue q USING old_rows o WHERE q.task_id = o.task_id AND o.status = 'queued';
    RETURN NULL;
END;
$$;

CREATE FUNCTION eqflow_queue_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE task_queue;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_queue_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION eqflow_queue_inserted();
-- eqflow_report_and_claim keeps task_queue itself (its reports never requeue; its claims
-- dequeue first), as it keeps its own counts (0013): the same setting skips both triggers.
CREATE TRIGGER tasks_queue_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT WHEN (current_setting('eqflow.counted', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION eqflow_queue_updated();
CREATE TRIGGER tasks_queue_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION eqflow_queue_deleted();
CREATE TRIGGER tasks_queue_truncate AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION eqflow_queue_truncated();

-- Reprioritize and cancel change what they find and check the rest afterwards: when fewer rows
-- changed than were asked for, the ids neither changed nor in tasks are unknown, and this
-- raises (SQLSTATE EQ404, the ids in DETAIL) so that the whole statement rolls back. Before,
-- each call looked every id up first, by a join over the whole of tasks.
CREATE FUNCTION eqflow_require_known(p_task_ids bigint[], p_changed bigint[]) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    unknown bigint[];
BEGIN
    IF cardinality(p_changed) >= cardinality(p_task_ids) THEN
        RETURN true;
    END IF;
    unknown := ARRAY(
        SELECT u.id FROM (SELECT unnest(p_task_ids) EXCEPT SELECT unnest(p_changed)) AS u(id)
        WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.task_id = u.id)
        ORDER BY u.id);
    IF cardinality(unknown) > 0 THEN
        RAISE EXCEPTION 'unknown task id(s)' USING ERRCODE = 'EQ404', DETAIL = array_to_string(unknown, ',');
    END IF;
    RETURN true;
END;
$$;

-- 0014's function, claiming from task_queue: the pick locks task_queue's rows (first, as every
-- writer does), the statement deletes them and hands their priority to the tasks rows it claims.
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
        picked := ARRAY(SELECT q.task_id FROM task_queue q
                        WHERE q.task_type = p_task_types[1]
                        ORDER BY q.priority DESC, q.task_id LIMIT p_n FOR UPDATE SKIP LOCKED);
    ELSIF p_n > 0 THEN
        picked := ARRAY(SELECT q.task_id FROM task_queue q
                        WHERE q.task_type = ANY(p_task_types)
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
    dequeued AS (
        DELETE FROM task_queue d WHERE d.task_id = ANY(picked) RETURNING d.task_id, d.priority),
    claimed AS (
        UPDATE tasks t
        SET status = 'running', priority = d.priority, pool = p_pool, attempts = t.attempts + 1,
            claim_id = nextval('eqflow_claim_seq'),
            lease_expires_at = now() + make_interval(secs => p_lease_s), started_at = now()
        FROM dequeued d
        -- "= ANY(picked)" is what makes a generic plan read the primary key: with the join alone,
        -- statistics of a small or freshly truncated table make it scan all of tasks per claim.
        WHERE t.task_id = ANY(picked) AND t.task_id = d.task_id
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
