-- 0003: every attempt keeps its own record; retries wait for a backoff; the dispatch
-- deadline has one definition; the events table is append-only in the database.

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
    metrics          jsonb
);
CREATE INDEX attempts_interaction ON attempts (interaction_id, attempt);

INSERT INTO attempts (interaction_id, batch_id, attempt, outcome, dispatched_at, ended_at, recorded_at, worker,
                      failure_class, failure_message, metrics)
SELECT id, batch_id, attempt, status, dispatched_at, ended_at, coalesce(ended_at, now()), worker,
       failure_class, failure_message, metrics
FROM interactions WHERE status IN ('completed', 'failed');

ALTER TABLE interactions DROP COLUMN metrics, DROP COLUMN worker;
-- A retry waits for its backoff: the claim queries skip it until then.
ALTER TABLE interactions ADD COLUMN not_before timestamptz;
-- Retries granted for a busy server (HTTP 429/503): they do not use the step's retries.
ALTER TABLE interactions ADD COLUMN busy_retries integer NOT NULL DEFAULT 0;
-- Work a rerun replaced: kept in the history with its cost, but it counts neither for
-- loop bounds nor for fan-in, and its output is no step's latest.
ALTER TABLE interactions ADD COLUMN superseded boolean NOT NULL DEFAULT false;

-- The one definition of a dispatched attempt's deadline: one timeout waiting behind
-- the in-flight window, one running, and 10 s for the result's way back. Past it the
-- sweeper takes the attempt back. A timeout is at most a day (workflow validation); the
-- bound here keeps a row stored before that rule from overflowing the interval and
-- failing every dispatch of its turn.
CREATE FUNCTION wavefarm_dispatch_deadline(timeout_s double precision) RETURNS timestamptz
LANGUAGE sql STABLE AS $$ SELECT now() + make_interval(secs => least(timeout_s, 86400) * 2 + 10) $$;

CREATE OR REPLACE FUNCTION wavefarm_interaction_event() RETURNS trigger
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
