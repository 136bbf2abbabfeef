-- The benchmarks' statements (eqflow.bench): scratch databases beside eqflow_bench on the same
-- server, and setup or bookkeeping on the peers' own tables (eqflow bench peers). Identifiers
-- are constants (CREATE/DROP DATABASE take no parameters). peer_* statements run on the peers' own
-- tables (in their own databases), not on eqflow's.

-- name: bench_drop_eqsql_database
DROP DATABASE IF EXISTS eqflow_bench_eqsql WITH (FORCE);

-- name: bench_create_eqsql_database
CREATE DATABASE eqflow_bench_eqsql;

-- name: bench_drop_pgqueuer_database
DROP DATABASE IF EXISTS eqflow_bench_pgqueuer WITH (FORCE);

-- name: bench_create_pgqueuer_database
CREATE DATABASE eqflow_bench_pgqueuer;

-- name: bench_drop_pgbench_database
DROP DATABASE IF EXISTS eqflow_bench_pgbench WITH (FORCE);

-- name: bench_create_pgbench_database
CREATE DATABASE eqflow_bench_pgbench;

-- name: peer_eqsql_truncate
-- EQ-SQL's tables (its workflow.sql), emptied between workloads.
TRUNCATE eq_exp_id_tasks, eq_tasks, eq_task_tags, emews_queue_out, emews_queue_in;

-- name: peer_eqsql_fill
-- n queued tasks in EQ-SQL's tables as its submit_task leaves them (ids from its sequence),
-- for the 100,000-task workload whose setup is not what is measured. Returns the ids.
WITH ids AS (
    SELECT nextval('emews_id_generator')::integer AS id FROM generate_series(1, %(n)s)),
tasks AS (
    INSERT INTO eq_tasks (eq_task_id, eq_task_type, json_out, time_created, eq_priority)
    SELECT id, %(task_type)s, '{}', now(), 0 FROM ids),
exp AS (
    INSERT INTO eq_exp_id_tasks (exp_id, eq_task_id) SELECT %(exp_id)s, id FROM ids),
queued AS (
    INSERT INTO emews_queue_out (eq_task_type, eq_task_id, eq_priority)
    SELECT %(task_type)s, id, 0 FROM ids)
SELECT id FROM ids ORDER BY id;

-- name: peer_pgqueuer_open
-- Jobs PgQueuer still holds (queued or being run; finished ones are deleted).
SELECT count(*) FROM pgqueuer;

-- name: bench_dead_tuples
-- Live and dead row versions and autovacuum runs of eqflow's task table.
SELECT n_live_tup, n_dead_tup, autovacuum_count, pg_total_relation_size('tasks')
FROM pg_stat_user_tables WHERE relname = 'tasks';

-- name: bench_fill_finished
-- n finished tasks written straight into tasks (eqflow bench scale: the history a long run leaves,
-- not what is measured), as report_results leaves them.
INSERT INTO tasks (exp_id, task_type, payload, status, result, pool, attempts, claim_id,
                   started_at, finished_at)
SELECT %(exp_id)s, %(task_type)s, '{}', 'complete', '{}', 'fill', 1, NULL, now(), now()
FROM generate_series(1, %(n)s);

-- name: bench_vacuum_tasks
VACUUM ANALYZE tasks;

-- name: bench_analyze_tasks
ANALYZE tasks;

-- name: bench_autovacuum_defaults
-- eqflow bench churn: the task table (and the counters) with PostgreSQL's default autovacuum
-- trigger and full pages, as before migration 0011, for the side-by-side run.
ALTER TABLE tasks RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_limit);

-- name: bench_is_superuser
SELECT rolsuper FROM pg_roles WHERE rolname = current_user;

-- name: bench_naptime_default
-- PostgreSQL's default pause between autovacuum's looks at a database (superuser only).
ALTER SYSTEM SET autovacuum_naptime = '1min';

-- name: bench_naptime_eqflow
-- The embedded cluster's setting (eqflow/db/embedded.py).
ALTER SYSTEM SET autovacuum_naptime = '10s';

-- name: bench_naptime_reset
-- Back to the server's own configuration file.
ALTER SYSTEM RESET autovacuum_naptime;

-- name: bench_reload_conf
SELECT pg_reload_conf();

-- name: bench_churn_truncate
-- The churn benchmark's tables, emptied with their statistics before each setting's run.
TRUNCATE tasks, task_metrics, task_throughput, task_flow, pools, experiments, submissions;

-- name: bench_churn_open
-- Queued tasks of one type (task_queue) and running tasks (tasks_lease_idx).
SELECT (SELECT count(*) FROM task_queue WHERE task_type = %(task_type)s),
       (SELECT count(*) FROM tasks WHERE status = 'running');

-- name: bench_churn_sample
-- Row versions, sizes and vacuum/update counters of the task table and the hot path's counters
-- table (task_flow, migration 0013).
SELECT t.n_live_tup, t.n_dead_tup, t.autovacuum_count, t.n_tup_upd, t.n_tup_hot_upd,
       pg_table_size('tasks'), pg_indexes_size('tasks'),
       m.n_dead_tup, m.n_tup_upd, m.n_tup_hot_upd, pg_total_relation_size('task_flow'),
       current_setting('autovacuum_naptime')
FROM pg_stat_user_tables t, pg_stat_user_tables m
WHERE t.relname = 'tasks' AND m.relname = 'task_flow';

-- name: peer_pgbench_update
-- pgbench -N's transaction (its built-in "simple update" script) as a Python client sends it:
-- this, peer_pgbench_select and peer_pgbench_insert in one transaction
-- (benchmarks/commit_ceiling.py, on pgbench's own tables).
UPDATE pgbench_accounts SET abalance = abalance + %(delta)s WHERE aid = %(aid)s;

-- name: peer_pgbench_select
SELECT abalance FROM pgbench_accounts WHERE aid = %(aid)s;

-- name: peer_pgbench_insert
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)
VALUES (%(tid)s, %(bid)s, %(aid)s, %(delta)s, CURRENT_TIMESTAMP);

-- name: ladder_quiet_session
-- For ladder_report_and_claim's connection only: its updates of tasks skip the metrics and queue
-- triggers (eqflow.counted, 0013) and announce nothing (eqflow.notify_done 'none', 0010) for the
-- rest of the session.
SELECT set_config('eqflow.counted', 'on', false), set_config('eqflow.notify_done', 'none', false);

-- name: ladder_report_and_claim
-- The least a batch-1 worker's statement can do on eqflow's tables (benchmarks/commit_ceiling.py):
-- report the held task and claim the next one, as eqflow_report_and_claim does, without its
-- counters or its announcement. Not used by eqflow itself.
WITH reported AS (
    UPDATE tasks t
    SET status = 'complete', result = %(result)s, error = NULL, finished_at = now(), lease_expires_at = NULL
    WHERE t.task_id = %(task_id)s AND t.status = 'running' AND t.claim_id = %(claim_id)s
    RETURNING t.task_id),
picked AS (
    SELECT q.task_id FROM task_queue q WHERE q.task_type = %(task_type)s
    ORDER BY q.priority DESC, q.task_id LIMIT 1 FOR UPDATE SKIP LOCKED),
dequeued AS (
    DELETE FROM task_queue d USING picked p WHERE d.task_id = p.task_id RETURNING d.task_id, d.priority),
claimed AS (
    UPDATE tasks t
    SET status = 'running', priority = d.priority, pool = %(pool)s, attempts = t.attempts + 1,
        claim_id = nextval('eqflow_claim_seq'), lease_expires_at = now() + interval '1 hour', started_at = now()
    FROM dequeued d WHERE t.task_id = d.task_id
    RETURNING t.task_id, t.claim_id)
-- One row: how many it reported (0 or 1), then the claimed task's id and claim id (NULL: none queued).
SELECT (SELECT count(*) FROM reported), c.task_id, c.claim_id FROM (SELECT) AS one LEFT JOIN claimed c ON true;
