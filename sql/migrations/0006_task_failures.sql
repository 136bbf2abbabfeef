-- eqflow schema, version 6: truthful run counts. attempts counts the runs a task started
-- (a pool that stops no longer gives a started run back); failures counts the runs that
-- failed or were lost (lease expired), and max_attempts caps those, so a task returned by a
-- pool that stopped is not pushed towards failing for good.
ALTER TABLE tasks ADD COLUMN failures integer NOT NULL DEFAULT 0 CHECK (failures >= 0);

-- Until now attempts counted only failed or lost runs, plus the one running or that completed.
-- Backfilled without announcing every finished task again.
ALTER TABLE tasks DISABLE TRIGGER tasks_announce_update;
UPDATE tasks
SET failures = greatest(attempts - CASE WHEN status IN ('running', 'complete') THEN 1 ELSE 0 END, 0)
WHERE attempts > 0;
ALTER TABLE tasks ENABLE TRIGGER tasks_announce_update;
