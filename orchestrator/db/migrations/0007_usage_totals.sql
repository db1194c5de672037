-- 0007: usage totals per batch, step and model: what `status --batch` shows of a batch's
-- cost and what Prometheus's counters sum (orchestrator/cost.py, orchestrator/metrics.py).

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


-- What was recorded before this migration.
INSERT INTO usage_totals (batch_id, step, model, attempts, prompt_tokens, output_tokens, call_s, cost, unpriced,
                          cache_hits)
SELECT a.batch_id, i.step, CASE WHEN i.kind = 'ai' THEN wavefarm_model(i.actor) ELSE '' END, count(*),
       coalesce(sum(a.prompt_tokens), 0), coalesce(sum(a.output_tokens), 0), coalesce(sum(a.call_s), 0),
       coalesce(sum(a.cost), 0), count(*) FILTER (WHERE i.kind = 'ai' AND a.cost IS NULL),
       count(*) FILTER (WHERE a.worker = 'cache' AND a.outcome = 'completed')
FROM attempts a JOIN interactions i ON i.id = a.interaction_id
GROUP BY 1, 2, 3;
