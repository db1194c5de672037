-- The schema the code expects. migrations/NNNN_*.sql, applied in order, must produce
-- exactly this (tests/integration/test_schema.py checks it).

-- A workflow is stored whole, as validated; every change is a new version and a run
-- pins the version it started with, so editing a workflow never changes a run in flight.
CREATE TABLE workflows (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    version     integer NOT NULL,
    digest      text NOT NULL,
    definition  jsonb NOT NULL,
    source      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

-- One submission of one CSV file. The same file for the same workflow version is the
-- same batch. A batch is paused (by a person, or for a credit limit) until resumed; a
-- cancelled batch keeps when, so that workers still holding its messages skip them.
CREATE TABLE batches (
    id             bigserial PRIMARY KEY,
    workflow_id    bigint NOT NULL REFERENCES workflows (id),
    workflow_name  text NOT NULL,
    source_name    text NOT NULL,
    source_digest  text NOT NULL,
    key_column     text,
    priority       integer NOT NULL DEFAULT 0,
    rows_good      integer NOT NULL DEFAULT 0,
    rows_rejected  integer NOT NULL DEFAULT 0,
    rows_empty     integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    paused_at      timestamptz,
    pause_reason   text,
    cancelled_at   timestamptz,
    -- The spend so far (the sum of its attempts' cost, kept by store_decisions) and the
    -- credit limit: reaching it pauses the batch (pause_reason budget_exceeded).
    credit_limit   numeric CHECK (credit_limit >= 0),
    spent          numeric NOT NULL DEFAULT 0,
    CONSTRAINT batches_workflow_id_source_digest_key UNIQUE (workflow_id, source_digest)
);

-- Rows the CSV reader refused, kept with their text: nothing submitted is lost.
CREATE TABLE batch_rejects (
    batch_id  bigint NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    line      integer NOT NULL,
    reason    text NOT NULL,
    raw       text NOT NULL,
    PRIMARY KEY (batch_id, line)
);

-- One record through one workflow version. (workflow_id, row_key) is unique so that
-- re-submitting a file never runs the same record twice on one version; a new version
-- runs it again. A completed run may carry a named outcome (`to: $end`).
CREATE TABLE runs (
    id             bigserial PRIMARY KEY,
    batch_id       bigint NOT NULL REFERENCES batches (id),
    workflow_id    bigint NOT NULL REFERENCES workflows (id),
    workflow_name  text NOT NULL,
    row_key        text NOT NULL,
    line           integer NOT NULL,
    input          jsonb NOT NULL,
    status         text NOT NULL DEFAULT 'running'
                   CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    end_reason     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,
    outcome        text,
    CONSTRAINT runs_workflow_id_row_key_key UNIQUE (workflow_id, row_key)
);
CREATE INDEX runs_batch_status ON runs (batch_id, status);
CREATE INDEX runs_workflow_name_row_key ON runs (workflow_name, row_key);
-- Runs cancelled one by one, newest first: what the holds name (queries.sql held_now).
CREATE INDEX runs_cancelled ON runs (ended_at) WHERE status = 'cancelled';

-- One execution of one step inside one run. Retries reuse the row with attempt+1 (each
-- attempt's own record is in `attempts`); a loop's second pass is a new row with
-- visit+1. Status changes only through orchestrator/states.py, each guarded by the
-- expected status and attempt.
CREATE TABLE interactions (
    id               bigserial PRIMARY KEY,
    run_id           bigint NOT NULL REFERENCES runs (id),
    batch_id         bigint NOT NULL,
    step             text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('ai', 'script')),
    actor            text NOT NULL,
    visit            integer NOT NULL,
    status           text NOT NULL
                     CHECK (status IN ('pending', 'dispatched', 'completed', 'failed', 'cancelled')),
    attempt          integer NOT NULL DEFAULT 1,
    max_attempts     integer NOT NULL,
    timeout_s        double precision NOT NULL,
    parent_ids       bigint[] NOT NULL DEFAULT '{}',
    input            jsonb NOT NULL,
    output           jsonb,
    output_chars     integer,
    failure_class    text,       -- the last failure: kept when it is retried, cleared on completion
    failure_message  text,
    failure_detail   jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    dispatched_at    timestamptz,
    deadline         timestamptz,  -- set at dispatch by wavefarm_dispatch_deadline
    ended_at         timestamptz,
    -- A retry waits for its backoff: the claim queries skip it until then.
    not_before       timestamptz,
    -- Retries granted for a busy server (HTTP 429/503): they do not use the step's retries.
    busy_retries     integer NOT NULL DEFAULT 0,
    -- Work a rerun replaced: kept in the history with its cost, but it counts neither for
    -- loop bounds nor for fan-in, and its output is no step's latest.
    superseded       boolean NOT NULL DEFAULT false,
    -- The digest of what the model is asked (system, prompt, options, format), on every
    -- AI interaction. cache_digest: the digest of the model that answered it, set when it
    -- completes (NULL again after `cache clear`): with cache_key, its answer's key in the
    -- cache. use_cache: its step has `cache: true`, so it looks there before it is sent.
    -- cached_from: the interaction whose output a cache hit reused (no foreign key:
    -- purging that batch must not touch this one).
    cache_key        text,
    use_cache        boolean NOT NULL DEFAULT false,
    cached_from      bigint,
    cache_digest     text,
    UNIQUE (run_id, step, visit)
);
CREATE INDEX interactions_cached ON interactions (batch_id) WHERE cached_from IS NOT NULL;
-- The interaction cache: the answers a later identical call may reuse, by what was asked
-- and the build of the model that answered. An entry is a column of the interaction, set
-- by the transition that completes it: no statement of its own in serve's turn, and a
-- purged batch takes its entries with it.
CREATE INDEX interactions_cache ON interactions (cache_key, cache_digest) WHERE cache_digest IS NOT NULL;
-- The dispatcher takes the oldest pending work; the sweeper scans in-flight deadlines.
CREATE INDEX interactions_pending ON interactions (id) WHERE status = 'pending';
CREATE INDEX interactions_deadline ON interactions (deadline) WHERE status = 'dispatched';
-- `status --batch` counts by step, actor and status from this index alone.
CREATE INDEX interactions_batch_counts ON interactions (batch_id, step, kind, actor, status);

-- One row per execution report of an interaction (or per attempt given up): who ran it,
-- where, how long, what it used, how it ended. Written when the attempt ends, never
-- overwritten, so a retry keeps the usage of the attempts before it. A result that
-- arrived late or twice is recorded too (outcome 'ignored'): the state machine ignores
-- it, but the GPU did the work and its usage counts.
CREATE TABLE attempts (
    id               bigserial PRIMARY KEY,
    interaction_id   bigint NOT NULL REFERENCES interactions (id),
    batch_id         bigint NOT NULL,
    attempt          integer NOT NULL,
    outcome          text NOT NULL CHECK (outcome IN ('completed', 'failed', 'cancelled', 'ignored')),
    dispatched_at    timestamptz,
    started_at       timestamptz,
    ended_at         timestamptz,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    worker           text,
    server           text,
    failure_class    text,
    failure_message  text,
    prompt_tokens    integer,
    output_tokens    integer,
    load_s           double precision,
    prompt_eval_s    double precision,
    eval_s           double precision,
    call_s           double precision,
    metrics          jsonb,
    model            text,     -- wavefarm_model(actor) of an AI step's attempt
    cost             numeric   -- at the prices in force when it was recorded; NULL: unpriced (or a script)
);
CREATE INDEX attempts_interaction ON attempts (interaction_id, attempt);

-- The one definition of a dispatched attempt's deadline: one timeout waiting behind
-- the in-flight window, one running, and 10 s for the result's way back. Past it the
-- sweeper takes the attempt back. A timeout is at most a day (workflow validation); the
-- bound here keeps a row stored before that rule from overflowing the interval and
-- failing every dispatch of its turn.
CREATE FUNCTION wavefarm_dispatch_deadline(timeout_s double precision) RETURNS timestamptz
LANGUAGE sql STABLE AS $$ SELECT now() + make_interval(secs => least(timeout_s, 86400) * 2 + 10) $$;


-- A step of a batch that keeps failing the same way is held until the batch is resumed.
CREATE TABLE escalations (
    id             bigserial PRIMARY KEY,
    batch_id       bigint NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    step           text NOT NULL,
    failure_class  text NOT NULL,
    reason         text NOT NULL,
    examples       jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL DEFAULT now(),
    lifted_at      timestamptz
);
CREATE UNIQUE INDEX escalations_open ON escalations (batch_id, step) WHERE lifted_at IS NULL;
-- The latest attempts of a batch, newest first: what escalation judges a step by.
CREATE INDEX attempts_batch ON attempts (batch_id, id);

-- Append-only history (enforced below): every status change (written by the trigger
-- below, so the history cannot disagree with the state) and every engine decision.
CREATE TABLE events (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    batch_id        bigint,
    run_id          bigint,
    interaction_id  bigint,
    kind            text NOT NULL,
    attempt         integer,
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_run ON events (run_id, id);
CREATE INDEX events_interaction ON events (interaction_id, id);
-- A batch's own events (pause, resume, ...), which belong to no run: what a purge finds by batch.
CREATE INDEX events_batch_level ON events (batch_id) WHERE run_id IS NULL;

-- The history is append-only in the database, not only by convention: no UPDATE ever;
-- DELETE and TRUNCATE only in a transaction that says it is purging whole batches
-- (SET LOCAL wavefarm.purging = 'on'), for retention.
CREATE FUNCTION wavefarm_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' OR current_setting('wavefarm.purging', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'the events table is append-only: % is refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION wavefarm_events_append_only();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION wavefarm_events_append_only();

CREATE FUNCTION wavefarm_interaction_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO events (batch_id, run_id, interaction_id, kind, attempt, detail)
        VALUES (NEW.batch_id, NEW.run_id, NEW.id, 'created', NEW.attempt,
                jsonb_build_object('step', NEW.step, 'status', NEW.status, 'parents', NEW.parent_ids));
        IF NEW.status = 'failed' THEN
            INSERT INTO events (batch_id, run_id, interaction_id, kind, attempt, detail)
            VALUES (NEW.batch_id, NEW.run_id, NEW.id, 'failed', NEW.attempt,
                    jsonb_build_object('step', NEW.step, 'failure_class', NEW.failure_class,
                                       'message', NEW.failure_message));
        END IF;
    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO events (batch_id, run_id, interaction_id, kind, attempt, detail)
        VALUES (NEW.batch_id, NEW.run_id, NEW.id,
                CASE
                    WHEN NEW.status = 'pending' AND OLD.status = 'failed' THEN 'retried'
                    WHEN NEW.status = 'pending' AND OLD.status = 'dispatched' THEN 'handed_back'
                    ELSE NEW.status
                END,
                NEW.attempt,
                jsonb_strip_nulls(jsonb_build_object(
                    'step', NEW.step, 'from', OLD.status, 'to', NEW.status,
                    'failure_class', NEW.failure_class, 'message', NEW.failure_message,
                    'not_before', CASE WHEN NEW.status = 'pending' THEN NEW.not_before END)));
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER interactions_events
    AFTER INSERT OR UPDATE OF status ON interactions
    FOR EACH ROW EXECUTE FUNCTION wavefarm_interaction_event();

CREATE FUNCTION wavefarm_run_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO events (batch_id, run_id, kind, detail)
        VALUES (NEW.batch_id, NEW.id,
                CASE WHEN NEW.status = 'running' THEN 'run_reopened' ELSE 'run_' || NEW.status END,
                jsonb_strip_nulls(jsonb_build_object('reason', NEW.end_reason, 'outcome', NEW.outcome)));
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_events
    AFTER UPDATE OF status ON runs
    FOR EACH ROW EXECUTE FUNCTION wavefarm_run_event();


-- The latest heartbeat of every worker (GPU or script). Workers never write here
-- themselves: they publish heartbeats on the reports queue and the orchestrator
-- records them (GPU hosts have no database credentials).
CREATE TABLE workers (
    name         text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('ai', 'script')),
    queues       text[] NOT NULL DEFAULT '{}',
    concurrency  integer NOT NULL,
    server       text,
    models       text[] NOT NULL DEFAULT '{}',
    circuit      text NOT NULL DEFAULT 'closed' CHECK (circuit IN ('closed', 'open')),
    -- name -> digest (Ollama's /api/tags; an OpenAI-compatible server's model id): which
    -- cache entries are answers of the model served today.
    digests      jsonb NOT NULL DEFAULT '{}',
    stopping     boolean NOT NULL DEFAULT false,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    -- Residency (orchestrator/placement.py): the host is (machine, server); it holds at most
    -- max_loaded models (NULL: serve does not place models on it), `resident` are loaded now
    -- (/api/ps), `placed` are what serve placed on it, as the worker last heard.
    machine      text,
    max_loaded   integer,
    resident     jsonb NOT NULL DEFAULT '[]',
    placed       text[]
);

-- Dispatch: which actors have pending work, which batches, and the next runs' work.
CREATE INDEX interactions_dispatch ON interactions (kind, actor, batch_id, run_id, id) WHERE status = 'pending';
-- Admission control: how many are in flight per actor.
CREATE INDEX interactions_in_flight ON interactions (kind, actor) WHERE status = 'dispatched';
-- Placement counts, per model, the pending work the cache answers (it needs no host): the
-- cached pending rows alone, with the columns the lookup needs.
CREATE INDEX interactions_pending_cached ON interactions (actor, batch_id) INCLUDE (cache_key, run_id)
    WHERE status = 'pending' AND use_cache;


-- A model is named as the hosts resolve it: Ollama reads `gemma2` as `gemma2:latest`,
-- so prices, usage and the cache all say `gemma2:latest` (a name whose last part has
-- no tag gets `:latest`; `hf.co/org/repo:Q4_K_M` and `qwen2.5:7b` stay as they are).
-- The one definition of that rule: Python asks the database rather than repeat it.
CREATE FUNCTION wavefarm_model(name text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN substring(name FROM '[^/]*$') LIKE '%:%' THEN name ELSE name || ':latest' END
$$;

-- The fleet's prices, per model: every `prices set` is a new row (unnamed fields carried
-- over from the row before), so an attempt is costed at the prices in force when it was
-- recorded, and changing a price later never rewrites what a batch cost.
CREATE TABLE prices (
    id             bigserial PRIMARY KEY,
    model          text NOT NULL,
    input_per_1m   numeric CHECK (input_per_1m >= 0),   -- per million prompt tokens
    output_per_1m  numeric CHECK (output_per_1m >= 0),  -- per million output tokens
    per_hour       numeric CHECK (per_hour >= 0),       -- per hour of one slot's call time
    set_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX prices_model ON prices (model, id DESC);

-- What an attempt costs at a price row: its tokens at the token prices plus its call time
-- at the hourly price (a price field not set counts 0). A plain expression, so that the
-- planner inlines it into store_decisions, whose price lookup is a join of its own.
CREATE FUNCTION wavefarm_cost(input_per_1m numeric, output_per_1m numeric, per_hour numeric,
                              prompt_tokens integer, output_tokens integer, call_s double precision)
RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(input_per_1m, 0) * coalesce(prompt_tokens, 0) / 1000000
         + coalesce(output_per_1m, 0) * coalesce(output_tokens, 0) / 1000000
         + coalesce(per_hour, 0) * coalesce(call_s, 0)::numeric / 3600
$$;


-- What a batch's attempts used and cost, per step and model ('' for a script), kept by
-- store_decisions as it records attempts (the one place they are written, in the same
-- statement). `status` reads a few rows per batch instead of a million attempts joined
-- with their interactions (5 s on a batch of 1,000,000: bench.status_1m), and a scrape
-- a few rows per batch. No foreign key: a purge leaves them, and the counters never go
-- down.
CREATE TABLE usage_totals (
    batch_id       bigint NOT NULL,
    step           text NOT NULL,
    model          text NOT NULL,   -- wavefarm_model of the step's model; '' for a script
    attempts       bigint NOT NULL DEFAULT 0,
    prompt_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    call_s         double precision NOT NULL DEFAULT 0,
    cost           numeric NOT NULL DEFAULT 0,
    unpriced       bigint NOT NULL DEFAULT 0,   -- AI attempts recorded when their model had no price
    cache_hits     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, step, model)
);
