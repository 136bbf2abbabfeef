-- eqflow schema, version 8: FunSearch's programs database, next to the task table.
-- Samplers and evaluators are ordinary tasks ('sample' and 'evaluate' task types); these tables
-- hold what the ME learns from them, so a killed ME resumes without losing or repeating a program.

-- An island's version goes up when it is reset: work begun for an older version is stale.
CREATE TABLE fs_islands (
    exp_id    text NOT NULL CHECK (length(exp_id) BETWEEN 1 AND 200),
    island    integer NOT NULL CHECK (island >= 0),
    version   integer NOT NULL DEFAULT 0 CHECK (version >= 0),
    reset_at  timestamptz,
    PRIMARY KEY (exp_id, island)
);

-- One evaluation per normalised body per experiment: the cache that makes an identical body
-- cost nothing. status is NULL while its evaluate task is in flight.
CREATE TABLE fs_evaluations (
    exp_id          text NOT NULL,
    body_hash       text NOT NULL,
    body            text NOT NULL,
    task_id         bigint,
    status          text CHECK (status IN ('ok', 'error', 'timeout', 'memory', 'invalid', 'lost')),
    scores          jsonb,
    score           double precision,
    behaviour_hash  text,
    cpu_s           double precision,
    error           text,
    evaluated_at    timestamptz,
    PRIMARY KEY (exp_id, body_hash)
);
CREATE INDEX fs_evaluations_task_idx ON fs_evaluations (task_id);

-- Every candidate a sample task returned, once: (sample task, index) is its identity, so a
-- resumed ME that sees the same finished sample task again inserts nothing.
CREATE TABLE fs_candidates (
    exp_id          text NOT NULL,
    sample_task_id  bigint NOT NULL,
    idx             integer NOT NULL,
    island          integer NOT NULL,
    island_version  integer NOT NULL,
    parents         bigint[] NOT NULL DEFAULT '{}',
    body_hash       text,          -- NULL: the completion did not parse
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'registered', 'duplicate', 'stale', 'failed', 'unparsed')),
    program_id      bigint,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (exp_id, sample_task_id, idx)
);
CREATE INDEX fs_candidates_pending_idx ON fs_candidates (exp_id, body_hash) WHERE state = 'pending';

CREATE TABLE fs_programs (
    program_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exp_id          text NOT NULL,
    island          integer NOT NULL,
    island_version  integer NOT NULL,
    body            text NOT NULL,
    body_hash       text NOT NULL,
    behaviour_hash  text NOT NULL,
    scores          jsonb NOT NULL,            -- per test, keyed by the test's JSON text
    score           double precision NOT NULL, -- reduced over the tests
    parents         bigint[] NOT NULL DEFAULT '{}',
    sampler         text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Deduplication: one behaviour per island and version.
    UNIQUE (exp_id, island, island_version, behaviour_hash)
);
CREATE INDEX fs_programs_best_idx ON fs_programs (exp_id, score DESC, program_id);
