-- 0004: operating a batch. A batch can be paused and escalated; a run can end on
-- purpose with a named outcome; a row's identity includes the workflow's version, so a
-- file submitted again after a new version is loaded runs again on that version.

-- A batch is paused (by a person, or for a credit limit) until resumed; a cancelled
-- batch keeps when it was cancelled, so that workers still holding its messages skip them.
ALTER TABLE batches ADD COLUMN paused_at timestamptz;
ALTER TABLE batches ADD COLUMN pause_reason text;
ALTER TABLE batches ADD COLUMN cancelled_at timestamptz;
ALTER TABLE batches DROP CONSTRAINT batches_workflow_name_source_digest_key;
ALTER TABLE batches ADD CONSTRAINT batches_workflow_id_source_digest_key UNIQUE (workflow_id, source_digest);

-- completed runs may end with a named outcome (`to: $end`, `outcome: rejected`).
ALTER TABLE runs ADD COLUMN outcome text;
ALTER TABLE runs DROP CONSTRAINT runs_workflow_name_row_key_key;
ALTER TABLE runs ADD CONSTRAINT runs_workflow_id_row_key_key UNIQUE (workflow_id, row_key);
CREATE INDEX runs_workflow_name_row_key ON runs (workflow_name, row_key);
CREATE INDEX runs_cancelled ON runs (ended_at) WHERE status = 'cancelled';

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

-- Events name the two new transitions: an attempt a worker handed back without starting
-- it (dispatched -> pending), and a run a retry opened again (-> running).
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

CREATE OR REPLACE FUNCTION wavefarm_run_event() RETURNS trigger
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
