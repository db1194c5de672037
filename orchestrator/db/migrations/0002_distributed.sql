-- 0002: distributed execution. Workers report what they consume; the dispatcher
-- sizes each queue's in-flight window from that and picks pending work per queue,
-- per batch, run by run.

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
    stopping     boolean NOT NULL DEFAULT false,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now()
);

-- Dispatch: which actors have pending work, which batches, and the next runs' work.
CREATE INDEX interactions_dispatch ON interactions (kind, actor, batch_id, run_id, id) WHERE status = 'pending';
-- Admission control: how many are in flight per actor.
CREATE INDEX interactions_in_flight ON interactions (kind, actor) WHERE status = 'dispatched';
