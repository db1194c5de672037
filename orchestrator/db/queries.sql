-- Every query wavefarm runs, by name. Parameters are %(name)s placeholders.

-- name: create_migrations_table
-- The bookkeeping table of orchestrator/db/migrate.py.
CREATE TABLE IF NOT EXISTS wavefarm_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- name: lock_migrations
-- Serialise concurrent upgrades until the end of the transaction.
SELECT pg_advisory_xact_lock(%(key)s)

-- name: migration_applied
SELECT 1 FROM wavefarm_migrations WHERE version = %(version)s

-- name: record_migration
INSERT INTO wavefarm_migrations (version, name) VALUES (%(version)s, %(name)s)

-- name: schema_version
SELECT max(version) AS version FROM wavefarm_migrations

-- name: lock_workflow_name
-- Two loads of the same workflow at once get consecutive versions, not a conflict.
SELECT pg_advisory_xact_lock(hashtext('wavefarm.workflow.' || %(name)s))

-- name: workflow_latest
SELECT id, name, version, digest, definition
FROM workflows WHERE name = %(name)s ORDER BY version DESC LIMIT 1

-- name: workflow_by_id
SELECT id, name, version, digest, definition FROM workflows WHERE id = %(id)s

-- name: insert_workflow
INSERT INTO workflows (name, version, digest, definition, source)
SELECT %(name)s, coalesce(max(version), 0) + 1, %(digest)s, %(definition)s, %(source)s
FROM workflows WHERE name = %(name)s
RETURNING id, version

-- name: list_workflows
SELECT DISTINCT ON (name) name, version, id, created_at,
       jsonb_array_length(definition -> 'steps') AS steps
FROM workflows ORDER BY name, version DESC

-- name: find_batch
SELECT b.id, b.workflow_id, b.workflow_name, w.version AS workflow_version, b.source_name, b.source_digest,
       b.key_column, b.priority, b.rows_good, b.rows_rejected, b.rows_empty, b.created_at,
       b.paused_at, b.pause_reason, b.cancelled_at, b.credit_limit, b.spent
FROM batches b JOIN workflows w ON w.id = b.workflow_id
WHERE b.workflow_id = %(workflow_id)s AND b.source_digest = %(digest)s

-- name: insert_batch
-- The id of a new batch; none when this file was submitted for this workflow version before.
INSERT INTO batches (workflow_id, workflow_name, source_name, source_digest, key_column, priority)
VALUES (%(workflow_id)s, %(workflow_name)s, %(source_name)s, %(digest)s, %(key_column)s, coalesce(%(priority)s, 0))
ON CONFLICT (workflow_id, source_digest) DO NOTHING
RETURNING id

-- name: update_batch_rows
UPDATE batches SET rows_good = %(good)s, rows_rejected = %(rejected)s, rows_empty = %(empty)s
WHERE id = %(id)s

-- name: insert_reject
INSERT INTO batch_rejects (batch_id, line, reason, raw)
VALUES (%(batch_id)s, %(line)s, %(reason)s, %(raw)s)
ON CONFLICT (batch_id, line) DO NOTHING

-- name: create_incoming_runs
-- Staging for one chunk of CSV rows, filled with COPY.
CREATE TEMP TABLE incoming_runs (row_key text, line integer, input jsonb) ON COMMIT DROP

-- name: copy_incoming_runs
COPY incoming_runs (row_key, line, input) FROM STDIN

-- name: rows_run_before
-- Rows of the staging table that an earlier version of the workflow ran: they run again.
SELECT count(*) FROM incoming_runs n
WHERE EXISTS (SELECT 1 FROM runs r WHERE r.workflow_name = %(workflow_name)s AND r.row_key = n.row_key
                                   AND r.workflow_id <> %(workflow_id)s)
  AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.workflow_id = %(workflow_id)s AND r.row_key = n.row_key)

-- name: insert_incoming_runs
-- Rows already run by this workflow version (same key) are skipped: re-submission never
-- duplicates; a new version runs them again.
INSERT INTO runs (batch_id, workflow_id, workflow_name, row_key, line, input)
SELECT %(batch_id)s, %(workflow_id)s, %(workflow_name)s, row_key, line, input
FROM incoming_runs ORDER BY line
ON CONFLICT (workflow_id, row_key) DO NOTHING
RETURNING id, line, input

-- name: copy_interactions
COPY interactions (run_id, batch_id, step, kind, actor, visit, status, max_attempts, timeout_s,
                   parent_ids, input, failure_class, failure_message, cache_key, use_cache)
FROM STDIN

-- name: store_decisions
-- What was decided over a batch of results, in one statement: the record of every
-- attempt that ended, with its model and its cost at the prices in force now (and the
-- batch's spend and the usage totals grown by it); the engine's events (in the order decided), then its
-- children (their `created` events come from the trigger, which fires at the end of the
-- statement, so after the decisions that made them); for each run in %(runs)s how much is still open (pending or
-- dispatched) after it; and the batches whose spend just reached their credit limit. Each kind of row travels as one JSON array of objects
-- (orchestrator/db/store.py makes them from rows.py's classes): a few parameters,
-- however many rows and columns, where an array per column cost the client more to
-- encode than the whole statement costs the server.
-- The unique (run_id, step, visit) makes a second creation of the same child a no-op.
WITH recorded AS (
    INSERT INTO attempts (interaction_id, batch_id, attempt, outcome, dispatched_at, started_at, ended_at, worker,
                          server, failure_class, failure_message, prompt_tokens, output_tokens, load_s,
                          prompt_eval_s, eval_s, call_s, metrics, model, cost)
    SELECT a.*, m.model, CASE WHEN p.id IS NOT NULL THEN wavefarm_cost(p.input_per_1m, p.output_per_1m, p.per_hour,
                                                                        a.prompt_tokens, a.output_tokens, a.call_s) END
    FROM jsonb_to_recordset(%(attempts)s::jsonb) AS a (
        interaction_id bigint, batch_id bigint, attempt integer, outcome text, dispatched_at timestamptz,
        started_at timestamptz, ended_at timestamptz, worker text, server text, failure_class text,
        failure_message text, prompt_tokens integer, output_tokens integer, load_s double precision,
        prompt_eval_s double precision, eval_s double precision, call_s double precision, metrics jsonb)
    CROSS JOIN LATERAL (SELECT CASE WHEN i.kind = 'ai' THEN wavefarm_model(i.actor) END AS model
                        FROM interactions i WHERE i.id = a.interaction_id) m
    -- The prices in force: the model's latest row.
    LEFT JOIN LATERAL (SELECT * FROM prices p WHERE p.model = m.model ORDER BY p.id DESC LIMIT 1) p ON true
    RETURNING interaction_id, batch_id, model, cost, prompt_tokens, output_tokens, call_s, worker, outcome
), used AS (
    -- What status and Prometheus read (usage_totals), in one lock order for concurrent appliers.
    INSERT INTO usage_totals AS u (batch_id, step, model, attempts, prompt_tokens, output_tokens, call_s, cost,
                                   unpriced, cache_hits)
    SELECT r.batch_id, i.step, coalesce(r.model, ''), count(*), coalesce(sum(r.prompt_tokens), 0),
           coalesce(sum(r.output_tokens), 0), coalesce(sum(r.call_s), 0), coalesce(sum(r.cost), 0),
           count(*) FILTER (WHERE r.model IS NOT NULL AND r.cost IS NULL),
           count(*) FILTER (WHERE r.worker = 'cache' AND r.outcome = 'completed')
    FROM recorded r JOIN interactions i ON i.id = r.interaction_id
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (batch_id, step, model) DO UPDATE SET
        attempts = u.attempts + excluded.attempts, prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
        output_tokens = u.output_tokens + excluded.output_tokens, call_s = u.call_s + excluded.call_s,
        cost = u.cost + excluded.cost, unpriced = u.unpriced + excluded.unpriced,
        cache_hits = u.cache_hits + excluded.cache_hits
), spent AS (
    UPDATE batches b SET spent = b.spent + s.cost
    FROM (SELECT batch_id, sum(cost) AS cost FROM recorded GROUP BY batch_id HAVING sum(cost) > 0) s
    WHERE b.id = s.batch_id
    RETURNING b.id, b.credit_limit IS NOT NULL AND b.spent >= b.credit_limit AND b.paused_at IS NULL
                    AND b.cancelled_at IS NULL AS over
), decided AS (
    INSERT INTO events (batch_id, run_id, interaction_id, kind, attempt, detail)
    SELECT e.batch_id, e.run_id, e.interaction_id, e.kind, e.attempt, e.detail
    FROM ROWS FROM (jsonb_to_recordset(%(events)s::jsonb)
                    AS (batch_id bigint, run_id bigint, interaction_id bigint, kind text, attempt integer,
                        detail jsonb))
         WITH ORDINALITY AS e (batch_id, run_id, interaction_id, kind, attempt, detail, n)
    ORDER BY e.n
), born AS (
    INSERT INTO interactions (run_id, batch_id, step, kind, actor, visit, status, max_attempts, timeout_s,
                              parent_ids, input, failure_class, failure_message, cache_key, use_cache, ended_at)
    SELECT v.run_id, v.batch_id, v.step, v.kind, v.actor, v.visit, v.status, v.max_attempts, v.timeout_s,
           v.parent_ids, v.input, v.failure_class, v.failure_message, v.cache_key, v.use_cache,
           CASE WHEN v.status = 'failed' THEN now() END
    FROM ROWS FROM (jsonb_to_recordset(%(children)s::jsonb)
                    AS (run_id bigint, batch_id bigint, step text, kind text, actor text, visit integer,
                        status text, max_attempts integer, timeout_s double precision, parent_ids bigint[],
                        input jsonb, failure_class text, failure_message text, cache_key text,
                        use_cache boolean))
         WITH ORDINALITY AS v (run_id, batch_id, step, kind, actor, visit, status, max_attempts, timeout_s,
                               parent_ids, input, failure_class, failure_message, cache_key, use_cache, n)
    ORDER BY v.n
    ON CONFLICT (run_id, step, visit) DO NOTHING
    RETURNING run_id, status
)
-- The statement does not see its own inserts: the children born pending are added.
SELECT r.run_id,
       (SELECT count(*) FROM interactions i WHERE i.run_id = r.run_id AND i.status IN ('pending', 'dispatched'))
       + (SELECT count(*) FROM born b WHERE b.run_id = r.run_id AND b.status = 'pending') AS open,
       NULL::bigint AS over_budget
FROM unnest(%(runs)s::bigint[]) AS r (run_id)
-- And the batches whose spend reached their credit limit with these attempts.
UNION ALL
SELECT NULL, NULL, id FROM spent WHERE over

-- name: claim_pending
-- pending -> dispatched for the oldest pending work whose backoff is over and that no
-- pause or escalation holds (the local executor); SKIP LOCKED keeps claimers apart.
UPDATE interactions i
SET status = 'dispatched', dispatched_at = now(), deadline = wavefarm_dispatch_deadline(i.timeout_s)
FROM (
    SELECT id FROM interactions
    WHERE status = 'pending' AND (%(batch_id)s::bigint IS NULL OR batch_id = %(batch_id)s::bigint)
      AND (not_before IS NULL OR not_before <= now())
      AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = batch_id AND b.paused_at IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM escalations e WHERE e.batch_id = interactions.batch_id
                                                    AND e.step = interactions.step AND e.lifted_at IS NULL)
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) claimed
WHERE i.id = claimed.id
RETURNING i.id, i.run_id, i.batch_id, i.step, i.kind, i.actor, i.attempt, i.timeout_s, i.deadline, i.input,
          CASE WHEN i.use_cache THEN i.cache_key END AS cache_key

-- name: claim_for_dispatch
-- The same transition for one actor's queue and one batch (serve's dispatcher; a paused
-- batch is not offered by dispatch_view), earliest runs first, so runs finish one after
-- another instead of every run advancing step by step.
UPDATE interactions i
SET status = 'dispatched', dispatched_at = now(), deadline = wavefarm_dispatch_deadline(i.timeout_s)
FROM (
    SELECT id FROM interactions
    WHERE status = 'pending' AND kind = %(kind)s AND actor = %(actor)s AND batch_id = %(batch_id)s
      AND (not_before IS NULL OR not_before <= now())
      AND NOT EXISTS (SELECT 1 FROM escalations e WHERE e.batch_id = %(batch_id)s AND e.step = interactions.step
                                                    AND e.lifted_at IS NULL)
    ORDER BY run_id, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) claimed
WHERE i.id = claimed.id
RETURNING i.id, i.run_id, i.batch_id, i.step, i.kind, i.actor, i.attempt, i.timeout_s, i.deadline, i.input,
          CASE WHEN i.use_cache THEN i.cache_key END AS cache_key

-- name: claim_cache_answered
-- The same transition, for the pending work of one AI actor in one batch that the cache
-- answers (cache_hits' rule, among the digests %(digests)s live hosts serve): serve claims
-- it even while no host consumes the model, since it needs none (placement leaves it out
-- of the backlog: model_backlog).
UPDATE interactions i
SET status = 'dispatched', dispatched_at = now(), deadline = wavefarm_dispatch_deadline(i.timeout_s)
FROM (
    SELECT id FROM interactions p
    WHERE status = 'pending' AND use_cache AND actor = %(actor)s AND batch_id = %(batch_id)s
      AND (not_before IS NULL OR not_before <= now())
      AND NOT EXISTS (SELECT 1 FROM escalations e WHERE e.batch_id = %(batch_id)s AND e.step = p.step
                                                    AND e.lifted_at IS NULL)
      AND EXISTS (SELECT 1 FROM interactions c
                  WHERE c.cache_key = p.cache_key AND c.cache_digest = ANY (%(digests)s::text[])
                    AND c.status = 'completed' AND (c.run_id <> p.run_id OR c.superseded))
    ORDER BY run_id, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) claimed
WHERE i.id = claimed.id
RETURNING i.id, i.run_id, i.batch_id, i.step, i.kind, i.actor, i.attempt, i.timeout_s, i.deadline, i.input,
          i.cache_key

-- name: dispatch_view
-- What a dispatch turn needs in one round trip, as rows of two kinds:
-- 'pending': every (kind, actor, batch) with pending work, the batch's priority and
--   whether it has a credit limit (orchestrator/budget.py),
--   found by skipping through interactions_dispatch one triple at a time (a loose
--   index scan: cheap however much is pending); a paused batch has none to give;
-- 'in_flight': how many are dispatched per (kind, actor) (interactions_in_flight).
WITH RECURSIVE w AS (
    (SELECT kind, actor, batch_id FROM interactions WHERE status = 'pending'
     ORDER BY kind, actor, batch_id LIMIT 1)
    UNION ALL
    SELECT n.kind, n.actor, n.batch_id FROM w CROSS JOIN LATERAL (
        SELECT kind, actor, batch_id FROM interactions
        WHERE status = 'pending' AND (kind, actor, batch_id) > (w.kind, w.actor, w.batch_id)
        ORDER BY kind, actor, batch_id LIMIT 1) n
)
SELECT * FROM (
    SELECT 'pending' AS what, w.kind, w.actor, w.batch_id, b.priority, NULL::bigint AS n,
           b.credit_limit IS NOT NULL AS limited
    FROM w JOIN batches b ON b.id = w.batch_id
    WHERE b.paused_at IS NULL
    UNION ALL
    SELECT 'in_flight', kind, actor, NULL, NULL, count(*), NULL FROM interactions WHERE status = 'dispatched'
    GROUP BY kind, actor
) v ORDER BY what DESC, kind, actor, batch_id

-- name: listen_for_work
-- serve's connection: told when a submission has created pending work (the payload is
-- the batch id), or a control changed what is held ('controls').
LISTEN wavefarm_work

-- name: unlisten
UNLISTEN *

-- name: notify_work
SELECT pg_notify('wavefarm_work', %(payload)s::text)

-- name: try_advisory_xact_lock
SELECT pg_try_advisory_xact_lock(%(key)s) AS locked

-- name: live_capacity
-- Slots per queue: the concurrency of every live worker consuming it.
SELECT q.queue, sum(w.concurrency)::int AS slots, count(*)::int AS workers
FROM workers w CROSS JOIN LATERAL unnest(w.queues) AS q(queue)
WHERE w.last_seen > now() - make_interval(secs => %(stale_s)s) AND NOT w.stopping
GROUP BY q.queue

-- name: upsert_worker
INSERT INTO workers (name, kind, queues, concurrency, server, models, digests, circuit, stopping, last_seen,
                     machine, max_loaded, resident, placed)
VALUES (%(name)s, %(kind)s, %(queues)s, %(concurrency)s, %(server)s, %(models)s, %(digests)s, %(circuit)s,
        %(stopping)s, %(at)s, %(machine)s, %(max_loaded)s, %(resident)s, %(placed)s)
ON CONFLICT (name) DO UPDATE SET
    kind = excluded.kind, queues = excluded.queues, concurrency = excluded.concurrency, server = excluded.server,
    models = excluded.models, digests = excluded.digests, circuit = excluded.circuit, stopping = excluded.stopping,
    last_seen = greatest(workers.last_seen, excluded.last_seen), machine = excluded.machine,
    max_loaded = excluded.max_loaded, resident = excluded.resident, placed = excluded.placed
-- A heartbeat delayed in the broker must not overwrite a newer one.
WHERE workers.last_seen <= excluded.last_seen

-- name: list_workers
SELECT name, kind, queues, concurrency, server, models, circuit, stopping, first_seen, last_seen,
       last_seen > now() - make_interval(secs => %(stale_s)s) AND NOT stopping AS live,
       machine, max_loaded, resident, placed
FROM workers ORDER BY kind, name

-- name: mark_completed
-- dispatched -> completed for the attempt given (the guard of every transition below:
-- a row not at that status and attempt is left alone). The attempt's record is written
-- by store_decisions.
UPDATE interactions i
SET status = 'completed', output = v.output, output_chars = v.output_chars, ended_at = now(),
    failure_class = NULL, failure_message = NULL, failure_detail = NULL, cached_from = v.cached_from,
    cache_digest = v.cache_digest
FROM unnest(%(id)s::bigint[], %(attempt)s::integer[], %(output)s::jsonb[], %(output_chars)s::integer[],
            %(cached_from)s::bigint[], %(cache_digest)s::text[])
     AS v (id, attempt, output, output_chars, cached_from, cache_digest)
WHERE i.id = v.id AND i.status = %(from_status)s AND i.attempt = v.attempt
RETURNING i.id, i.run_id, i.batch_id, i.step, i.visit, i.status, i.attempt, i.max_attempts, i.busy_retries,
          i.dispatched_at, i.output

-- name: mark_failed
UPDATE interactions i
SET status = 'failed', failure_class = v.failure_class, failure_message = v.failure_message,
    failure_detail = v.failure_detail, ended_at = now()
FROM unnest(%(id)s::bigint[], %(attempt)s::integer[], %(failure_class)s::text[], %(failure_message)s::text[],
            %(failure_detail)s::jsonb[])
     AS v (id, attempt, failure_class, failure_message, failure_detail)
WHERE i.id = v.id AND i.status = %(from_status)s AND i.attempt = v.attempt
RETURNING i.id, i.run_id, i.batch_id, i.step, i.visit, i.status, i.attempt, i.max_attempts, i.busy_retries,
          i.dispatched_at, i.output

-- name: requeue
-- failed -> pending with attempt + 1, dispatched again once its backoff is over. A
-- retry granted to a busy server raises max_attempts with it: it uses none of the
-- step's retries. The last failure stays on the row (show tells why it was retried)
-- until an attempt completes.
UPDATE interactions i
SET status = 'pending', attempt = i.attempt + 1, dispatched_at = NULL, deadline = NULL, ended_at = NULL,
    not_before = now() + make_interval(secs => v.delay_s),
    max_attempts = i.max_attempts + v.busy::integer, busy_retries = i.busy_retries + v.busy::integer
FROM unnest(%(id)s::bigint[], %(attempt)s::integer[], %(delay_s)s::double precision[], %(busy)s::boolean[])
     AS v (id, attempt, delay_s, busy)
WHERE i.id = v.id AND i.status = %(from_status)s AND i.attempt = v.attempt
RETURNING i.id, i.run_id, i.batch_id, i.step, i.visit, i.status, i.attempt, i.max_attempts, i.busy_retries,
          i.dispatched_at, i.output

-- name: mark_cancelled
UPDATE interactions i SET status = 'cancelled', ended_at = now()
FROM unnest(%(id)s::bigint[], %(attempt)s::integer[]) AS v (id, attempt)
WHERE i.id = v.id AND i.status = %(from_status)s AND i.attempt = v.attempt
RETURNING i.id, i.run_id, i.batch_id, i.step, i.visit, i.status, i.attempt, i.max_attempts, i.busy_retries,
          i.dispatched_at, i.output

-- name: hand_back
-- dispatched -> pending for attempts a worker received and did not start because they
-- are held: the same attempt goes out again once the hold lifts (it used none).
UPDATE interactions i SET status = 'pending', dispatched_at = NULL, deadline = NULL
FROM unnest(%(id)s::bigint[], %(attempt)s::integer[]) AS v (id, attempt)
WHERE i.id = v.id AND i.status = %(from_status)s AND i.attempt = v.attempt
RETURNING i.id, i.run_id, i.batch_id, i.step, i.visit, i.status, i.attempt, i.max_attempts, i.busy_retries,
          i.dispatched_at, i.output

-- name: expired_interactions
SELECT id, attempt, timeout_s, dispatched_at, deadline FROM interactions
WHERE status = 'dispatched' AND deadline < now()
ORDER BY deadline LIMIT %(limit)s

-- name: lock_result_targets
-- The interactions a batch of results is for, with their runs, both locked. Every
-- decision about a run happens with its row locked, so results of one run apply one
-- at a time; the interaction's lock waits for the commit of its own dispatch (another
-- serve process may have published the task and the worker been quick), so the
-- guarded transition that follows sees `dispatched`. One lock order for every
-- transaction that applies results, runs then interactions by id: two serve processes
-- applying overlapping batches wait for each other instead of deadlocking.
SELECT i.id, i.run_id, r.batch_id, r.workflow_id, r.input
FROM interactions i JOIN runs r ON r.id = i.run_id
WHERE i.id = ANY(%(ids)s)
ORDER BY i.run_id, i.id
FOR UPDATE OF r, i

-- name: interaction_states
SELECT id, status, attempt FROM interactions WHERE id = ANY(%(ids)s) ORDER BY id

-- name: wait_for_dispatches
-- Held by a dispatching transaction (try_advisory_xact_lock on the dispatch key): a
-- result for an interaction this transaction cannot see yet waits here until the
-- transaction that created and published it has ended.
SELECT pg_advisory_xact_lock_shared(%(key)s)

-- name: run_steps
-- Per run and step: how often it ran, its last interaction, and its latest output (the
-- engine's whole view of a batch of runs, in one round trip). Work a rerun superseded
-- is history only: it counts neither for loop bounds nor for fan-in, and gives no
-- output; only the next visit's number goes past it (visits are unique per step).
SELECT run_id, step,
       count(*) FILTER (WHERE NOT superseded) AS visits,
       max(visit) AS last_visit,
       max(id) FILTER (WHERE NOT superseded) AS last_id,
       max(id) FILTER (WHERE status = 'completed' AND NOT superseded) AS last_completed_id,
       max(visit) FILTER (WHERE status = 'completed' AND NOT superseded) AS output_visit,
       (array_agg(output ORDER BY visit DESC) FILTER (WHERE status = 'completed' AND NOT superseded))[1] AS output
FROM interactions WHERE run_id = ANY(%(run_ids)s) GROUP BY run_id, step

-- name: failed_interactions
SELECT run_id, step, attempt, failure_class, failure_message FROM interactions
WHERE run_id = ANY(%(run_ids)s) AND status = 'failed' AND NOT superseded ORDER BY run_id, id

-- name: problem_events
-- The engine's decisions that say how a run ends (a problem, an end on purpose); those
-- about work a rerun superseded are history only.
SELECT e.run_id, e.kind, e.detail FROM events e
WHERE e.run_id = ANY(%(run_ids)s) AND e.kind = ANY(%(kinds)s)
  AND NOT EXISTS (SELECT 1 FROM interactions i WHERE i.id = e.interaction_id AND i.superseded)
ORDER BY e.run_id, e.id

-- name: finish_runs
-- running -> completed | failed | cancelled, with the reason: the one statement that
-- ends runs (orchestrator/states.py end_runs).
UPDATE runs r SET status = v.status, end_reason = v.reason, outcome = v.outcome, ended_at = now()
FROM unnest(%(id)s::bigint[], %(status)s::text[], %(reason)s::text[], %(outcome)s::text[])
     AS v (id, status, reason, outcome)
WHERE r.id = v.id AND r.status = %(from_status)s
RETURNING r.id

-- name: lock_running_runs
-- A batch's running runs, locked in id order: the first half of the lock order every
-- transaction that changes runs and their interactions follows (runs, then their
-- interactions), so cancel and apply wait for each other instead of deadlocking.
SELECT id FROM runs WHERE batch_id = %(batch_id)s AND status = 'running' ORDER BY id FOR UPDATE

-- name: lock_open_interactions
-- The second half: the open interactions of runs this transaction holds, in (run, id) order.
SELECT id, run_id, batch_id, status, attempt, dispatched_at FROM interactions
WHERE run_id = ANY(%(run_ids)s) AND status IN ('pending', 'dispatched')
ORDER BY run_id, id FOR UPDATE

-- name: list_batches
SELECT b.id, b.workflow_name, w.version AS workflow_version, b.source_name, b.created_at,
       b.rows_good, b.rows_rejected,
       count(r.id) AS runs,
       count(r.id) FILTER (WHERE r.status = 'running') AS running,
       count(r.id) FILTER (WHERE r.status = 'completed') AS completed,
       count(r.id) FILTER (WHERE r.status = 'failed') AS failed,
       count(r.id) FILTER (WHERE r.status = 'cancelled') AS cancelled
FROM batches b JOIN workflows w ON w.id = b.workflow_id LEFT JOIN runs r ON r.batch_id = b.id
GROUP BY b.id, w.version ORDER BY b.id

-- name: batch_by_id
SELECT b.id, b.workflow_id, b.workflow_name, w.version AS workflow_version, b.source_name, b.source_digest,
       b.key_column, b.priority, b.rows_good, b.rows_rejected, b.rows_empty, b.created_at,
       b.paused_at, b.pause_reason, b.cancelled_at, b.credit_limit, b.spent
FROM batches b JOIN workflows w ON w.id = b.workflow_id
WHERE b.id = %(id)s

-- name: batch_run_counts
SELECT status, count(*) AS n FROM runs WHERE batch_id = %(batch_id)s GROUP BY status

-- name: batch_outcome_counts
-- Completed runs by how they ended: a named outcome (`to: $end`) or the workflow's end.
SELECT coalesce(outcome, 'completed') AS outcome, count(*) AS n FROM runs
WHERE batch_id = %(batch_id)s AND status = 'completed' GROUP BY 1 ORDER BY 1

-- name: batch_interaction_counts
SELECT step, kind, actor, status, count(*) AS n FROM interactions
WHERE batch_id = %(batch_id)s GROUP BY step, kind, actor, status

-- name: batch_rejects
SELECT line, reason FROM batch_rejects WHERE batch_id = %(batch_id)s ORDER BY line LIMIT %(limit)s

-- name: batch_failure_counts
SELECT step, failure_class, count(*) AS n, min(failure_message) AS example
FROM interactions WHERE batch_id = %(batch_id)s AND status = 'failed'
GROUP BY step, failure_class ORDER BY n DESC

-- name: batch_failed_run_reasons
-- Why runs failed, most common first: the first thing a user asks after a batch.
SELECT end_reason, count(*) AS n FROM runs
WHERE batch_id = %(batch_id)s AND status = 'failed'
GROUP BY end_reason ORDER BY n DESC, end_reason LIMIT %(limit)s

-- name: run_by_id
SELECT r.id, r.batch_id, r.workflow_id, r.workflow_name, w.version AS workflow_version, r.row_key, r.line,
       r.input, r.status, r.outcome, r.end_reason, r.created_at, r.ended_at, b.source_name
FROM runs r JOIN workflows w ON w.id = r.workflow_id JOIN batches b ON b.id = r.batch_id
WHERE r.id = %(id)s

-- name: run_interactions
-- A run's interactions in order, each with who ran its latest recorded attempt.
SELECT i.id, i.step, i.kind, i.actor, i.visit, i.status, i.attempt, i.max_attempts, i.parent_ids,
       length(i.input::text) AS input_chars, i.output_chars, i.failure_class, i.failure_message, i.failure_detail,
       i.created_at, i.dispatched_at, i.ended_at, i.not_before, i.superseded,
       extract(epoch FROM i.ended_at - i.dispatched_at)::float8 AS duration_s,
       a.worker, a.server, i.cached_from, src.run_id AS cached_from_run, src.batch_id AS cached_from_batch,
       (SELECT sum(t.cost) FROM attempts t WHERE t.interaction_id = i.id) AS cost
FROM interactions i
-- A cache hit's source: its run and batch while they are still there (a purge takes them).
LEFT JOIN interactions src ON src.id = i.cached_from
LEFT JOIN LATERAL (SELECT worker, server FROM attempts
                   WHERE interaction_id = i.id AND outcome <> 'ignored'
                   ORDER BY attempt DESC, id DESC LIMIT 1) a ON true
WHERE i.run_id = %(run_id)s ORDER BY i.id

-- name: run_attempts
-- Every attempt of a run's interactions, with its usage, in the order they were recorded.
SELECT a.interaction_id, a.attempt, a.outcome, a.dispatched_at, a.started_at, a.ended_at, a.recorded_at,
       a.worker, a.server, a.failure_class, a.failure_message, a.prompt_tokens, a.output_tokens, a.load_s,
       a.prompt_eval_s, a.eval_s, a.call_s, a.metrics, a.model, a.cost
FROM attempts a JOIN interactions i ON i.id = a.interaction_id
WHERE i.run_id = %(run_id)s ORDER BY a.id

-- name: run_events
SELECT id, at, interaction_id, kind, attempt, detail FROM events WHERE run_id = %(run_id)s ORDER BY id

-- name: export_batch
-- One record per run with the latest output of every step that completed.
SELECT r.id AS run_id, r.line, r.input AS row, r.status, r.outcome, r.end_reason,
       coalesce((SELECT jsonb_object_agg(o.step, o.output)
                 FROM (SELECT DISTINCT ON (i.step) i.step, i.output
                       FROM interactions i
                       WHERE i.run_id = r.id AND i.status = 'completed' AND NOT i.superseded
                       ORDER BY i.step, i.visit DESC) o), '{}'::jsonb) AS outputs
FROM runs r WHERE r.batch_id = %(batch_id)s ORDER BY r.id

-- name: open_interactions
-- Open work that can still move without a person: pending work an escalation holds
-- waits for `resume` and does not count (a paused batch's does: its resume is expected).
SELECT count(*) AS open FROM interactions i
WHERE status IN ('pending', 'dispatched') AND (%(batch_id)s::bigint IS NULL OR batch_id = %(batch_id)s::bigint)
  AND NOT (status = 'pending' AND EXISTS (SELECT 1 FROM escalations e WHERE e.batch_id = i.batch_id
                                              AND e.step = i.step AND e.lifted_at IS NULL))

-- name: open_interaction_counts
-- For Prometheus: what waits and what is in flight, by step and actor (partial indexes only).
SELECT status, step, kind, actor, count(*)::int AS n FROM interactions
WHERE status IN ('pending', 'dispatched') GROUP BY status, step, kind, actor

-- name: open_by_actor
SELECT kind, actor, count(*) FILTER (WHERE status = 'pending')::int AS pending,
       count(*) FILTER (WHERE status = 'dispatched')::int AS dispatched
FROM interactions WHERE status IN ('pending', 'dispatched') GROUP BY kind, actor

-- name: set_batch_priority
UPDATE batches SET priority = %(priority)s WHERE id = %(id)s

-- name: insert_events
-- Decisions outside a batch of results (pause, resume, escalation, retry): in order.
INSERT INTO events (batch_id, run_id, interaction_id, kind, attempt, detail)
SELECT e.batch_id, e.run_id, e.interaction_id, e.kind, e.attempt, e.detail
FROM ROWS FROM (jsonb_to_recordset(%(events)s::jsonb)
                AS (batch_id bigint, run_id bigint, interaction_id bigint, kind text, attempt integer, detail jsonb))
     WITH ORDINALITY AS e (batch_id, run_id, interaction_id, kind, attempt, detail, n)
ORDER BY e.n

-- name: pause_batch
-- A batch that is not paused yet is paused, with why; its id, or none.
UPDATE batches SET paused_at = now(), pause_reason = %(reason)s
WHERE id = %(id)s AND paused_at IS NULL
RETURNING id

-- name: set_credit_limit
-- The batch's credit limit (NULL: none).
UPDATE batches SET credit_limit = %(credit_limit)s WHERE id = %(id)s

-- name: resume_batch
-- The pause lifted (whatever its reason); its id, or none when it was not paused.
UPDATE batches SET paused_at = NULL, pause_reason = NULL
WHERE id = %(id)s AND paused_at IS NOT NULL
RETURNING id

-- name: lift_escalations
UPDATE escalations SET lifted_at = now()
WHERE batch_id = %(batch_id)s AND lifted_at IS NULL
RETURNING step

-- name: open_escalations
SELECT id, batch_id, step, failure_class, reason, examples, created_at
FROM escalations WHERE lifted_at IS NULL AND (%(batch_id)s::bigint IS NULL OR batch_id = %(batch_id)s::bigint)
ORDER BY created_at, id

-- name: insert_escalation
-- One open escalation per step of a batch: a second is a no-op.
INSERT INTO escalations (batch_id, step, failure_class, reason, examples)
VALUES (%(batch_id)s, %(step)s, %(failure_class)s, %(reason)s, %(examples)s)
ON CONFLICT (batch_id, step) WHERE lifted_at IS NULL DO NOTHING
RETURNING id

-- name: set_batch_cancelled
UPDATE batches SET cancelled_at = now() WHERE id = %(id)s

-- name: batch_running_runs
SELECT count(*) FROM runs WHERE batch_id = %(batch_id)s AND status = 'running'

-- name: lock_runs
-- Runs named by id, locked in id order (the first half of every writer's lock order).
SELECT id, batch_id, workflow_id, status FROM runs WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE

-- name: held_now
-- What no worker may start (orchestrator/holds.py): paused batches, batches cancelled in
-- the last day (their messages may still sit in queues and prefetch buffers), open
-- escalations, and the most recent runs cancelled one by one; and a 'clock' row with
-- the transaction's time, which orders two readings (a worker keeps the newer).
SELECT 'clock' AS what, 0::bigint AS batch_id, NULL::bigint AS run_id, NULL::text AS step, now() AS at
UNION ALL
SELECT 'batch', id, NULL, NULL, NULL FROM batches
WHERE paused_at IS NOT NULL OR cancelled_at > now() - interval '1 day'
UNION ALL
SELECT 'step', batch_id, NULL, step, NULL FROM escalations WHERE lifted_at IS NULL
UNION ALL
(SELECT 'run', r.batch_id, r.id, NULL, NULL FROM runs r
 WHERE r.status = 'cancelled' AND r.ended_at > now() - interval '1 day'
 ORDER BY r.ended_at DESC LIMIT %(max_runs)s)

-- == escalation (orchestrator/escalation.py) ==============================================

-- name: step_recent_failures
-- The latest finished attempts of a step in a batch, newest first (failure_class NULL:
-- it completed), and the interactions born failed (a template that did not render), with
-- a run, attempt and message for the examples an escalation quotes.
(SELECT a.failure_class, i.run_id, a.interaction_id, a.attempt, a.failure_message, a.recorded_at AS at, a.id AS n
 FROM attempts a JOIN interactions i ON i.id = a.interaction_id
 WHERE a.batch_id = %(batch_id)s AND i.step = %(step)s AND a.outcome IN ('completed', 'failed')
 ORDER BY a.id DESC LIMIT %(limit)s)
UNION ALL
(SELECT i.failure_class, i.run_id, i.id, i.attempt, i.failure_message, i.ended_at, i.id
 FROM interactions i
 WHERE i.batch_id = %(batch_id)s AND i.step = %(step)s AND i.status = 'failed' AND i.dispatched_at IS NULL
   AND i.failure_class = 'render_error'
 ORDER BY i.id DESC LIMIT %(limit)s)
ORDER BY at DESC, n DESC LIMIT %(limit)s

-- == retry (orchestrator/rerun.py) ========================================================

-- name: workflow_version
SELECT id, name, version, digest, definition FROM workflows WHERE name = %(name)s AND version = %(version)s

-- name: lock_runs_to_retry
-- The runs of a batch a retry may touch (some of them, or all), locked in id order: the
-- first half of every writer's lock order.
SELECT id, workflow_id, status, row_key, input FROM runs
WHERE batch_id = %(batch_id)s AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND status = ANY(%(statuses)s)
ORDER BY id FOR UPDATE

-- name: lock_run_interactions
-- The second half: every interaction of those runs that is not history yet, in (run, id) order.
SELECT id, run_id, step, visit, status, attempt, max_attempts, parent_ids, dispatched_at FROM interactions
WHERE run_id = ANY(%(run_ids)s) AND NOT superseded
ORDER BY run_id, id FOR UPDATE

-- name: ending_events
-- The engine's decisions that ended runs with nothing failed (an output that matched no
-- branch, a loop bound), each naming the interaction it was about.
SELECT e.run_id, e.interaction_id FROM events e
WHERE e.run_id = ANY(%(run_ids)s) AND e.kind = ANY(%(kinds)s)
  AND NOT EXISTS (SELECT 1 FROM interactions i WHERE i.id = e.interaction_id AND i.superseded)
ORDER BY e.run_id, e.id

-- name: rerun_failed
-- failed -> pending by `retry`: the next attempt (attempt + 1, never reset: guards and
-- task ids rely on it), now; allowed attempts raised for a fresh set of retries; its
-- input rendered again and its actor taken from the run's (maybe new) workflow version.
UPDATE interactions i
SET status = 'pending', attempt = i.attempt + 1, dispatched_at = NULL, deadline = NULL, ended_at = NULL,
    not_before = now(), max_attempts = v.max_attempts, kind = v.kind, actor = v.actor, timeout_s = v.timeout_s,
    input = v.input
FROM unnest(%(id)s::bigint[], %(attempt)s::integer[], %(max_attempts)s::integer[], %(kind)s::text[],
            %(actor)s::text[], %(timeout_s)s::double precision[], %(input)s::jsonb[])
     AS v (id, attempt, max_attempts, kind, actor, timeout_s, input)
WHERE i.id = v.id AND i.status = %(from_status)s AND i.attempt = v.attempt
RETURNING i.id, i.run_id, i.batch_id, i.step, i.visit, i.status, i.attempt, i.max_attempts, i.busy_retries,
          i.dispatched_at, i.output

-- name: supersede_interactions
-- Work a rerun replaces becomes history: a flag, not a status (it was real work and
-- keeps its attempts and cost); only ended work can be superseded.
UPDATE interactions SET superseded = true
WHERE id = ANY(%(ids)s) AND status IN ('completed', 'failed', 'cancelled') AND NOT superseded
RETURNING id

-- name: reopen_runs
-- completed | failed | cancelled -> running by `retry`: the end forgotten (the event log keeps it).
UPDATE runs SET status = 'running', end_reason = NULL, outcome = NULL, ended_at = NULL
WHERE id = ANY(%(ids)s) AND status = %(from_status)s
RETURNING id

-- name: move_runs
UPDATE runs SET workflow_id = %(workflow_id)s WHERE id = ANY(%(ids)s)

-- name: runs_on_version
-- Row keys a workflow version runs already (a moved run would take its identity).
SELECT id, row_key FROM runs WHERE workflow_id = %(workflow_id)s AND row_key = ANY(%(keys)s)

-- name: lift_step_escalations
UPDATE escalations SET lifted_at = now()
WHERE batch_id = %(batch_id)s AND step = ANY(%(steps)s) AND lifted_at IS NULL
RETURNING step

-- name: clear_batch_cancelled
UPDATE batches SET cancelled_at = NULL WHERE id = %(id)s

-- name: batch_workflow_ids
-- The workflow versions a batch's runs run (a retry can move runs to another).
SELECT DISTINCT workflow_id FROM runs WHERE batch_id = %(batch_id)s ORDER BY workflow_id

-- == Progress that a person can read (orchestrator/pace.py, progress.py, metrics.py) =======

-- name: batch_pace
-- Runs ended / total, and how many ended in the last minute (or since the batch was made,
-- when that is shorter): the rate comes from runs.ended_at and the database's clock, so
-- every watcher of a batch sees the same rate and ETA.
SELECT count(r.id)::int AS runs,
       count(r.id) FILTER (WHERE r.status <> 'running')::int AS ended,
       count(r.id) FILTER (WHERE r.status = 'completed')::int AS completed,
       count(r.id) FILTER (WHERE r.status = 'failed')::int AS failed,
       count(r.id) FILTER (WHERE r.status = 'cancelled')::int AS cancelled,
       count(r.id) FILTER (WHERE r.status <> 'running' AND r.ended_at > now() - interval '60 seconds')::int
           AS ended_recently,
       greatest(1.0, least(60.0, extract(epoch FROM now() - b.created_at)))::float8 AS window_s
FROM batches b LEFT JOIN runs r ON r.batch_id = b.id
WHERE b.id = %(batch_id)s GROUP BY b.id

-- name: metrics_batches
-- For Prometheus: the pace and state of the batches worth a series: those with a running
-- run, those made or cancelled in the last hour, and those the caller still shows (ended
-- within the hour as it saw them). Finished batches are not scanned again and again, so
-- a scrape costs the same however long the farm's history is.
SELECT b.id AS batch_id, b.workflow_name, b.paused_at IS NOT NULL AS paused,
       (SELECT count(*) FROM escalations e WHERE e.batch_id = b.id AND e.lifted_at IS NULL)::int AS escalations,
       c.runs, c.ended, c.completed, c.failed, c.cancelled, c.ended_recently,
       greatest(1.0, least(60.0, extract(epoch FROM now() - b.created_at)))::float8 AS window_s
FROM batches b
CROSS JOIN LATERAL (
    SELECT count(*)::int AS runs,
           count(*) FILTER (WHERE r.status <> 'running')::int AS ended,
           count(*) FILTER (WHERE r.status = 'completed')::int AS completed,
           count(*) FILTER (WHERE r.status = 'failed')::int AS failed,
           count(*) FILTER (WHERE r.status = 'cancelled')::int AS cancelled,
           count(*) FILTER (WHERE r.status <> 'running' AND r.ended_at > now() - interval '60 seconds')::int
               AS ended_recently
    FROM runs r WHERE r.batch_id = b.id) c
WHERE b.id = ANY(%(shown)s::bigint[])
   OR b.created_at > now() - interval '1 hour'
   OR b.cancelled_at > now() - interval '1 hour'
   OR EXISTS (SELECT 1 FROM runs r WHERE r.batch_id = b.id AND r.status = 'running')
ORDER BY b.id

-- == failure triage, purge, dry run (orchestrator/triage.py, retention.py, dry_run.py) ======

-- name: failure_groups
-- A batch's failed attempts by step and failure class: each attempt's own record (a
-- failure that was retried counts too), and the interactions that failed before any
-- attempt (a template that did not render, a task that could not be made). Per group:
-- how many attempts, in how many runs, how many were the last word on their
-- interaction (it is failed now), when first and last, and up to three examples with
-- different messages, newest first. Read through interactions (indexed by batch) and
-- attempts by interaction.
WITH f AS (
    SELECT i.step, coalesce(a.failure_class, 'unknown') AS failure_class, i.id AS interaction_id, i.run_id,
           a.attempt, coalesce(a.failure_message, '') AS message, coalesce(a.ended_at, a.recorded_at) AS at,
           (i.status = 'failed' AND a.attempt = i.attempt AND NOT i.superseded) AS final
    FROM interactions i JOIN attempts a ON a.interaction_id = i.id
    WHERE i.batch_id = %(batch_id)s AND a.outcome = 'failed'
    UNION ALL
    SELECT i.step, coalesce(i.failure_class, 'unknown'), i.id, i.run_id, i.attempt, coalesce(i.failure_message, ''),
           coalesce(i.ended_at, i.created_at), NOT i.superseded
    FROM interactions i
    WHERE i.batch_id = %(batch_id)s AND i.status = 'failed'
      AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.interaction_id = i.id AND a.attempt = i.attempt
                                                 AND a.outcome = 'failed')
), groups AS (
    SELECT step, failure_class, count(*) AS attempts, count(DISTINCT run_id) AS runs,
           count(*) FILTER (WHERE final) AS given_up, min(at) AS first_at, max(at) AS last_at
    FROM f GROUP BY step, failure_class
), examples AS (
    SELECT *, row_number() OVER (PARTITION BY step, failure_class ORDER BY at DESC, interaction_id DESC) AS n
    FROM (SELECT DISTINCT ON (step, failure_class, message) * FROM f
          ORDER BY step, failure_class, message, at DESC, interaction_id DESC) one_per_message
)
SELECT g.step, g.failure_class, g.attempts, g.runs, g.given_up, g.first_at, g.last_at,
       coalesce(jsonb_agg(jsonb_build_object('run_id', e.run_id, 'interaction_id', e.interaction_id,
                                             'attempt', e.attempt, 'at', e.at, 'message', left(e.message, 4000))
                          ORDER BY e.n) FILTER (WHERE e.n IS NOT NULL), '[]') AS examples
FROM groups g LEFT JOIN examples e ON e.step = g.step AND e.failure_class = g.failure_class AND e.n <= 3
GROUP BY g.step, g.failure_class, g.attempts, g.runs, g.given_up, g.first_at, g.last_at
ORDER BY g.attempts DESC, g.step, g.failure_class

-- name: engine_problem_groups
-- Runs that ended failed because of a decision of the engine, not of a failed step
-- (an output that matched no branch, a loop bound), by kind and step, with up to three
-- examples, newest first. Decisions about work a rerun superseded are history only.
WITH p AS (
    SELECT e.kind, coalesce(e.detail ->> 'step', '') AS step, e.run_id, e.at, e.detail
    FROM runs r JOIN events e ON e.run_id = r.id
    WHERE r.batch_id = %(batch_id)s AND r.status = 'failed' AND e.kind = ANY(%(kinds)s)
      AND NOT EXISTS (SELECT 1 FROM interactions i WHERE i.id = e.interaction_id AND i.superseded)
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY kind, step ORDER BY at DESC, run_id DESC) AS n FROM p
)
SELECT kind, step, count(*) AS occurrences, count(DISTINCT run_id) AS runs, min(at) AS first_at, max(at) AS last_at,
       jsonb_agg(jsonb_build_object('run_id', run_id, 'at', at, 'detail', detail) ORDER BY n)
           FILTER (WHERE n <= 3) AS examples
FROM ranked GROUP BY kind, step ORDER BY count(*) DESC, kind, step

-- name: batch_reject_rows
-- Every row the CSV reader refused, with its text, in file order.
SELECT line, reason, raw FROM batch_rejects WHERE batch_id = %(batch_id)s ORDER BY line LIMIT %(limit)s

-- name: batch_reject_count
SELECT count(*) FROM batch_rejects WHERE batch_id = %(batch_id)s

-- name: batch_escalations
-- A batch's escalations, open ones first, then the lifted, newest first.
SELECT id, step, failure_class, reason, examples, created_at, lifted_at
FROM escalations WHERE batch_id = %(batch_id)s
ORDER BY lifted_at IS NOT NULL, created_at DESC, id DESC

-- name: purge_counts
-- What a purge of a batch would delete, table by table.
SELECT (SELECT count(*) FROM runs WHERE batch_id = %(batch_id)s) AS runs,
       (SELECT count(*) FROM runs WHERE batch_id = %(batch_id)s AND status = 'running') AS running,
       (SELECT count(*) FROM interactions WHERE batch_id = %(batch_id)s) AS interactions,
       (SELECT count(*) FROM attempts a JOIN interactions i ON i.id = a.interaction_id
        WHERE i.batch_id = %(batch_id)s) AS attempts,
       (SELECT count(*) FROM events e JOIN runs r ON r.id = e.run_id WHERE r.batch_id = %(batch_id)s)
       + (SELECT count(*) FROM events WHERE batch_id = %(batch_id)s AND run_id IS NULL) AS events,
       (SELECT count(*) FROM batch_rejects WHERE batch_id = %(batch_id)s) AS rejects,
       (SELECT count(*) FROM escalations WHERE batch_id = %(batch_id)s) AS escalations

-- name: purge_allow_events
-- SET LOCAL wavefarm.purging = 'on': the events trigger lets this transaction's DELETEs through.
SELECT set_config('wavefarm.purging', 'on', true)

-- name: purge_lock_runs
-- All of a batch's runs, locked in id order (the lock order every writer follows:
-- runs, then their interactions, then the batch); how many are still running.
SELECT count(*) FILTER (WHERE status = 'running') FROM
    (SELECT status FROM runs WHERE batch_id = %(batch_id)s ORDER BY id FOR UPDATE) locked

-- name: purge_lock_batch
-- The batch itself: a submission of the same file waits (it adds runs to this batch).
SELECT id FROM batches WHERE id = %(batch_id)s FOR UPDATE

-- name: purge_events
DELETE FROM events WHERE run_id IN (SELECT id FROM runs WHERE batch_id = %(batch_id)s)

-- name: purge_batch_events
DELETE FROM events WHERE batch_id = %(batch_id)s AND run_id IS NULL

-- name: purge_attempts
DELETE FROM attempts WHERE interaction_id IN (SELECT id FROM interactions WHERE batch_id = %(batch_id)s)

-- name: purge_interactions
DELETE FROM interactions WHERE batch_id = %(batch_id)s

-- name: purge_runs
DELETE FROM runs WHERE batch_id = %(batch_id)s

-- name: purge_rejects
DELETE FROM batch_rejects WHERE batch_id = %(batch_id)s

-- name: purge_escalations
DELETE FROM escalations WHERE batch_id = %(batch_id)s

-- name: purge_batch
DELETE FROM batches WHERE id = %(batch_id)s

-- name: dry_run_existing_keys
-- Of these row keys, those this workflow version has run already (submit would skip them).
SELECT row_key FROM runs WHERE workflow_id = %(workflow_id)s AND row_key = ANY(%(keys)s)

-- name: dry_run_keys_run_before
-- Of these row keys, those another version of the workflow ran (new here: they run again).
SELECT DISTINCT row_key FROM runs
WHERE workflow_name = %(workflow_name)s AND workflow_id IS DISTINCT FROM %(workflow_id)s::bigint
  AND row_key = ANY(%(keys)s)

-- name: live_digests
-- What the live model hosts serve, model -> its digests (one per host that reported
-- it; two when hosts disagree): the answers of which the cache may reuse.
SELECT wavefarm_model(d.name) AS model, array_agg(DISTINCT d.digest ORDER BY d.digest) AS digests
FROM workers w CROSS JOIN LATERAL jsonb_each_text(w.digests) AS d (name, digest)
WHERE w.kind = 'ai' AND w.last_seen > now() - make_interval(secs => %(stale_s)s) AND NOT w.stopping
GROUP BY 1

-- name: cache_hits
-- Which claimed interactions the cache answers: a completed interaction that asked the
-- same (cache_key) of a model build served today (cache_digest among %(digests)s, model ->
-- digests), not of the same run (a loop that asks again means to sample again) unless a
-- rerun superseded it. The oldest such answer: every hit of a question reuses one.
WITH wanted AS (
    SELECT c.id, c.attempt, c.run_id, c.key, d.digests
    FROM jsonb_to_recordset(%(claimed)s::jsonb) AS c (id bigint, attempt integer, run_id bigint, key text, actor text)
    JOIN (SELECT wavefarm_model(m.name) AS model, array_agg(x.digest) AS digests
          FROM jsonb_each(%(digests)s::jsonb) AS m (name, list)
          CROSS JOIN LATERAL jsonb_array_elements_text(m.list) AS x (digest)
          GROUP BY 1) d ON d.model = wavefarm_model(c.actor)
)
SELECT w.id, w.attempt, s.id AS source, s.output
FROM wanted w CROSS JOIN LATERAL (
    SELECT i.id, i.output FROM interactions i
    WHERE i.cache_key = w.key AND i.cache_digest = ANY (w.digests) AND i.status = 'completed'
      AND (i.run_id <> w.run_id OR i.superseded)
    ORDER BY i.id
    LIMIT 1) s

-- name: cache_stats
-- The cache per model: answers kept (entries), hits served (interactions answered from
-- it), the oldest entry and the last hit, and the tokens and cost of the calls the hits
-- did not make (each hit's source attempt, at the prices it was paid at).
WITH entries AS (
    SELECT wavefarm_model(actor) AS model, count(*)::int AS entries, min(ended_at) AS oldest
    FROM interactions WHERE cache_digest IS NOT NULL GROUP BY 1
), hits AS (
    SELECT wavefarm_model(h.actor) AS model, count(*)::bigint AS hits, max(h.ended_at) AS last_hit,
           coalesce(sum(s.prompt_tokens), 0)::bigint AS saved_prompt_tokens,
           coalesce(sum(s.output_tokens), 0)::bigint AS saved_output_tokens,
           coalesce(sum(s.cost), 0)::numeric AS saved_cost
    FROM interactions h
    LEFT JOIN LATERAL (SELECT t.prompt_tokens, t.output_tokens, t.cost FROM attempts t
                       WHERE t.interaction_id = h.cached_from AND t.outcome = 'completed'
                       ORDER BY t.id DESC LIMIT 1) s ON true
    WHERE h.cached_from IS NOT NULL AND h.status = 'completed'
    GROUP BY 1
)
SELECT coalesce(e.model, h.model) AS model, coalesce(e.entries, 0) AS entries, coalesce(h.hits, 0) AS hits,
       e.oldest, h.last_hit, coalesce(h.saved_prompt_tokens, 0) AS saved_prompt_tokens,
       coalesce(h.saved_output_tokens, 0) AS saved_output_tokens, coalesce(h.saved_cost, 0) AS saved_cost
FROM entries e FULL JOIN hits h ON h.model = e.model
ORDER BY 1

-- name: cache_clear
-- Forget answers (the interactions and their outputs stay): of one model, older than a
-- number of days, or all.
UPDATE interactions SET cache_digest = NULL
WHERE cache_digest IS NOT NULL
  AND (%(model)s::text IS NULL OR wavefarm_model(actor) = wavefarm_model(%(model)s::text))
  AND (%(older_than_days)s::float8 IS NULL
       OR ended_at < now() - make_interval(secs => %(older_than_days)s::float8 * 86400))

-- name: batches_over_budget
-- Of these batches, those whose spend reached their credit limit and that are still
-- running (not paused, not cancelled): serve pauses them.
SELECT id, spent, credit_limit FROM batches
WHERE id = ANY (%(ids)s::bigint[]) AND credit_limit IS NOT NULL AND spent >= credit_limit
  AND paused_at IS NULL AND cancelled_at IS NULL
ORDER BY id

-- name: budget_view
-- For the batches with a credit limit among %(ids)s: the credit left, and per model (or
-- script) with work of the batch pending or in flight, how many are in flight and what
-- one costs on average (its latest 100 costed attempts in the batch; NULL while none has
-- been costed yet), and whether the model has a price at all.
WITH limited AS (
    SELECT id, credit_limit - spent AS left FROM batches
    WHERE id = ANY (%(ids)s::bigint[]) AND credit_limit IS NOT NULL
), actors AS (
    SELECT i.batch_id, i.kind, i.actor, count(*)::int AS in_flight
    FROM interactions i JOIN limited l ON l.id = i.batch_id
    WHERE i.status = 'dispatched'
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT p.batch_id, p.kind, p.actor, 0
    FROM jsonb_to_recordset(%(pending)s::jsonb) AS p (batch_id bigint, kind text, actor text)
    JOIN limited l ON l.id = p.batch_id
), per_actor AS (
    SELECT batch_id, kind, actor, sum(in_flight)::int AS in_flight FROM actors GROUP BY 1, 2, 3
)
SELECT a.batch_id, l.left, a.kind, a.actor, a.in_flight,
       CASE WHEN a.kind = 'ai' THEN (
           SELECT avg(r.cost) FROM (
               SELECT t.cost FROM attempts t
               WHERE t.batch_id = a.batch_id AND t.model = wavefarm_model(a.actor) AND t.cost IS NOT NULL
               ORDER BY t.id DESC LIMIT 100) r) END AS estimate,
       a.kind = 'ai' AND EXISTS (SELECT 1 FROM prices p WHERE p.model = wavefarm_model(a.actor)) AS priced
FROM per_actor a JOIN limited l ON l.id = a.batch_id
ORDER BY 1, 3, 4

-- == cost: prices, what a batch cost, the cache's savings (orchestrator/prices.py, cost.py) ==

-- name: insert_price
-- A new price row of a model (its canonical name), the fields not given carried over
-- from its latest row; the row stored.
INSERT INTO prices (model, input_per_1m, output_per_1m, per_hour)
SELECT wavefarm_model(%(model)s::text),
       coalesce(%(input_per_1m)s::numeric, last.input_per_1m),
       coalesce(%(output_per_1m)s::numeric, last.output_per_1m),
       coalesce(%(per_hour)s::numeric, last.per_hour)
FROM (SELECT 1) one
LEFT JOIN LATERAL (SELECT * FROM prices p WHERE p.model = wavefarm_model(%(model)s::text)
                   ORDER BY p.id DESC LIMIT 1) last ON true
RETURNING model, input_per_1m, output_per_1m, per_hour, set_at

-- name: prices_in_force
-- Each model's latest price row (prices_model: model, id DESC).
SELECT DISTINCT ON (model) model, input_per_1m, output_per_1m, per_hour, set_at
FROM prices ORDER BY model, id DESC

-- name: batch_cost
-- What a batch's attempts used and cost, per step and model (NULL: a script), from the
-- totals store_decisions keeps: every attempt counts (retries, failures, late and
-- duplicate results recorded as ignored: the model did that work), so the tokens are
-- what the model servers counted. Unpriced: AI attempts whose model had no price when
-- they were recorded (counted as 0). A cache hit is an attempt of worker 'cache' with no
-- usage of its own; what it saved is its source's completed attempt, at the cost that
-- one was paid at (nothing known when that batch was purged), found from the hits alone
-- (interactions_cached).
WITH saved AS (
    SELECT h.step, wavefarm_model(h.actor) AS model,
           coalesce(sum(s.prompt_tokens), 0)::bigint AS saved_prompt_tokens,
           coalesce(sum(s.output_tokens), 0)::bigint AS saved_output_tokens,
           coalesce(sum(s.cost), 0)::numeric AS saved_cost
    FROM interactions h
    LEFT JOIN LATERAL (
        SELECT t.prompt_tokens, t.output_tokens, t.cost FROM attempts t
        WHERE t.interaction_id = h.cached_from AND t.outcome = 'completed'
        ORDER BY t.id DESC LIMIT 1) s ON true
    WHERE h.batch_id = %(batch_id)s AND h.cached_from IS NOT NULL AND h.status = 'completed'
    GROUP BY 1, 2
)
SELECT u.step, CASE WHEN u.model = '' THEN 'script' ELSE 'ai' END AS kind, nullif(u.model, '') AS model,
       u.attempts::int, u.prompt_tokens, u.output_tokens, u.call_s AS model_s, u.cost, u.unpriced::int,
       u.cache_hits::int, coalesce(s.saved_prompt_tokens, 0) AS saved_prompt_tokens,
       coalesce(s.saved_output_tokens, 0) AS saved_output_tokens, coalesce(s.saved_cost, 0) AS saved_cost
FROM usage_totals u
LEFT JOIN saved s ON s.step = u.step AND s.model = u.model
WHERE u.batch_id = %(batch_id)s
ORDER BY u.step, u.model = '', u.model

-- name: export_batch_cost
-- export --cost: export_batch's record and each run's cost (its interactions' attempts'
-- cost; unpriced counts 0) and tokens, every attempt counted (retries, ignored ones).
SELECT r.id AS run_id, r.line, r.input AS row, r.status, r.outcome, r.end_reason,
       coalesce((SELECT jsonb_object_agg(o.step, o.output)
                 FROM (SELECT DISTINCT ON (i.step) i.step, i.output
                       FROM interactions i
                       WHERE i.run_id = r.id AND i.status = 'completed' AND NOT i.superseded
                       ORDER BY i.step, i.visit DESC) o), '{}'::jsonb) AS outputs,
       c.cost, c.prompt_tokens, c.output_tokens
FROM runs r
CROSS JOIN LATERAL (
    SELECT coalesce(sum(a.cost), 0)::numeric AS cost, coalesce(sum(a.prompt_tokens), 0)::bigint AS prompt_tokens,
           coalesce(sum(a.output_tokens), 0)::bigint AS output_tokens
    FROM interactions i JOIN attempts a ON a.interaction_id = i.id WHERE i.run_id = r.id) c
WHERE r.batch_id = %(batch_id)s ORDER BY r.id

-- name: metrics_usage
-- For Prometheus: what each model used and cost since the farm began, from the usage
-- totals the attempts trigger keeps (a few rows per batch, never the attempts table).
SELECT model, sum(attempts)::bigint AS attempts, sum(prompt_tokens)::bigint AS prompt_tokens,
       sum(output_tokens)::bigint AS output_tokens, sum(call_s)::float8 AS call_s, sum(cost)::numeric AS cost,
       sum(cache_hits)::bigint AS cache_hits
FROM usage_totals WHERE model <> '' GROUP BY model ORDER BY model

-- == residency (orchestrator/residency.py) ================================================

-- name: model_backlog
-- What placement weighs (orchestrator/placement.py), per AI actor and batch: the work
-- ready to go, leaving out what no host may start (a paused batch's, an escalated
-- step's) and what the cache answers (cache_hits' rule, among the digests %(digests)s
-- that live hosts serve); the work dispatched (in queues, prefetch buffers and calls);
-- the batch's priority and workflow (whose steps say the context they ask for). Counted
-- from the partial indexes: no pending row's input is read.
WITH pending AS (
    SELECT actor, batch_id, count(*) AS n FROM interactions WHERE status = 'pending' AND kind = 'ai'
    GROUP BY actor, batch_id
), escalated AS (
    SELECT i.actor, i.batch_id, count(*) AS n
    FROM escalations e JOIN interactions i ON i.batch_id = e.batch_id AND i.step = e.step
    WHERE e.lifted_at IS NULL AND i.status = 'pending' AND i.kind = 'ai'
    GROUP BY 1, 2
), hits AS (
    SELECT i.actor, i.batch_id, count(*) AS n FROM interactions i
    WHERE i.status = 'pending' AND i.use_cache AND EXISTS (
        SELECT 1 FROM interactions c
        WHERE c.cache_key = i.cache_key AND c.cache_digest = ANY (%(digests)s::text[]) AND c.status = 'completed'
          AND (c.run_id <> i.run_id OR c.superseded))
    GROUP BY 1, 2
), in_flight AS (
    SELECT actor, batch_id, count(*) AS n FROM interactions WHERE status = 'dispatched' AND kind = 'ai'
    GROUP BY actor, batch_id
)
SELECT k.actor, wavefarm_model(k.actor) AS model, k.batch_id, b.workflow_id, b.priority,
       CASE WHEN b.paused_at IS NOT NULL THEN 0
            ELSE greatest(coalesce(p.n, 0) - coalesce(e.n, 0) - coalesce(h.n, 0), 0) END::int AS waiting,
       coalesce(f.n, 0)::int AS in_flight
FROM (SELECT actor, batch_id FROM pending UNION SELECT actor, batch_id FROM in_flight) k
JOIN batches b ON b.id = k.batch_id
LEFT JOIN pending p ON p.actor = k.actor AND p.batch_id = k.batch_id
LEFT JOIN escalated e ON e.actor = k.actor AND e.batch_id = k.batch_id
LEFT JOIN hits h ON h.actor = k.actor AND h.batch_id = k.batch_id
LEFT JOIN in_flight f ON f.actor = k.actor AND f.batch_id = k.batch_id

-- name: placement_hosts
-- The live GPU workers as placement sees them, model names as the hosts resolve them
-- (wavefarm_model): the host (machine, server), how many models it holds (NULL: serve
-- does not place models on it), what it has, what is loaded, and its slots.
SELECT w.name, coalesce(w.machine, w.name) AS machine, coalesce(w.server, '') AS server, w.max_loaded,
       w.concurrency, w.placed,
       ARRAY(SELECT wavefarm_model(m) FROM unnest(w.models) AS m) AS models,
       ARRAY(SELECT wavefarm_model(r ->> 'model') FROM jsonb_array_elements(w.resident) AS r
             WHERE r ->> 'model' IS NOT NULL) AS resident
FROM workers w
WHERE w.kind = 'ai' AND w.last_seen > now() - make_interval(secs => %(stale_s)s) AND NOT w.stopping
  AND w.circuit = 'closed'  -- a host whose server is down holds nothing for the farm
ORDER BY w.name

-- name: model_timing
-- What a call and a load of each model take, from the latest attempts of the batches
-- %(batch_ids)s (placement: a second copy of a model costs a load, worth it only for a
-- backlog that would take longer than that on the hosts it has). A load is counted where
-- the call paid one (Ollama's load_duration; a resident model's is a few ms).
SELECT a.model, avg(a.call_s - coalesce(a.load_s, 0)) FILTER (WHERE a.call_s IS NOT NULL) AS call_s,
       avg(a.load_s) FILTER (WHERE a.load_s > 0.1) AS load_s
FROM unnest(%(batch_ids)s::bigint[]) AS b (id)
CROSS JOIN LATERAL (
    SELECT model, call_s, load_s FROM attempts
    WHERE batch_id = b.id AND model IS NOT NULL AND model <> '' AND worker <> 'cache'
    ORDER BY id DESC LIMIT 500) a
GROUP BY a.model
