-- eqflow schema, version 1: experiments, one task table, worker pools.
-- The task state machine lives here: an enum of states, CHECKs that tie timestamps
-- to states, and statement-level triggers that announce new work and finished tasks.

CREATE TYPE eqflow_task_status AS ENUM ('queued', 'running', 'complete', 'failed', 'canceled');

CREATE TABLE experiments (
    exp_id      text PRIMARY KEY CHECK (length(exp_id) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    config      jsonb NOT NULL DEFAULT '{}'::jsonb,
    status      text NOT NULL DEFAULT 'running'
);

-- Every claim takes a fresh claim id: a report from an older lease can never match.
CREATE SEQUENCE eqflow_claim_seq;

CREATE TABLE tasks (
    task_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exp_id            text NOT NULL CHECK (length(exp_id) BETWEEN 1 AND 200),
    task_type         integer NOT NULL,
    priority          integer NOT NULL DEFAULT 0,
    status            eqflow_task_status NOT NULL DEFAULT 'queued',
    payload           text NOT NULL,
    result            text,
    error             text,
    tag               text,
    pool              text,
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claim_id          bigint,  -- names the current lease holder; a report must present it
    max_attempts      integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    CONSTRAINT finished_iff_final
        CHECK ((status IN ('complete', 'failed', 'canceled')) = (finished_at IS NOT NULL)),
    CONSTRAINT running_has_lease
        CHECK (status <> 'running' OR (lease_expires_at IS NOT NULL AND pool IS NOT NULL))
);

-- Serves claim: highest priority first, FIFO within a priority.
CREATE INDEX tasks_queue_idx ON tasks (task_type, priority DESC, task_id) WHERE status = 'queued';
-- Serves the lease rescuer.
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE status = 'running';
-- Serves re-attach and per-experiment statistics.
CREATE INDEX tasks_exp_idx ON tasks (exp_id, task_id);

CREATE TABLE pools (
    pool_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL,
    task_types      integer[] NOT NULL,
    launcher        text NOT NULL DEFAULT 'local',
    host            text,
    pid             integer,
    job_id          text,
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('starting', 'running', 'stopping', 'stopped', 'lost')),
    n_workers       integer NOT NULL DEFAULT 1 CHECK (n_workers >= 1),
    stop_requested  text CHECK (stop_requested IN ('drain', 'now')),
    info            jsonb NOT NULL DEFAULT '{}'::jsonb,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    stopped_at      timestamptz
);
CREATE INDEX pools_active_idx ON pools USING gin (task_types) WHERE status IN ('starting', 'running');

-- Wake-ups. Notifications are delivered at commit, so a listener that hears one can read
-- the rows it names. eqflow_queued carries a task type; eqflow_done carries
-- "<exp_id>|<id>,<id>,..." in chunks that stay under NOTIFY's 8000-byte payload limit.
CREATE FUNCTION eqflow_announce() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    typ integer;
    chunk record;
BEGIN
    FOR typ IN SELECT DISTINCT task_type FROM changed WHERE status = 'queued' LOOP
        PERFORM pg_notify('eqflow_queued', typ::text);
    END LOOP;
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

CREATE TRIGGER tasks_announce_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION eqflow_announce();
CREATE TRIGGER tasks_announce_update AFTER UPDATE ON tasks
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION eqflow_announce();

-- Pools told to stop hear it at once.
CREATE FUNCTION eqflow_announce_pool_stop() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('eqflow_pool', pool_id::text)
    FROM changed WHERE stop_requested IS NOT NULL;
    RETURN NULL;
END;
$$;
CREATE TRIGGER pools_announce_stop AFTER UPDATE ON pools
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION eqflow_announce_pool_stop();
