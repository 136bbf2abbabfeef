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
