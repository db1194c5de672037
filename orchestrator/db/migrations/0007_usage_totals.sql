-- 0007: usage totals per batch and model, for Prometheus's counters (orchestrator/metrics.py).

-- What the farm's models used and cost, per batch and model, kept by store_decisions as it
-- records attempts (the one place they are written, in the same statement: a trigger
-- cost every turn a planning and a transition table): Prometheus's counters are sums
-- over these rows (a few per batch),
-- not over the attempts table, so a scrape costs the same however long its history. No
-- foreign key: a purge leaves them, and the counters never go down.
CREATE TABLE usage_totals (
    batch_id       bigint NOT NULL,
    model          text NOT NULL,
    attempts       bigint NOT NULL DEFAULT 0,
    prompt_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens  bigint NOT NULL DEFAULT 0,
    call_s         double precision NOT NULL DEFAULT 0,
    cost           numeric NOT NULL DEFAULT 0,
    cache_hits     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, model)
);


-- What was recorded before this migration.
INSERT INTO usage_totals (batch_id, model, attempts, prompt_tokens, output_tokens, call_s, cost, cache_hits)
SELECT batch_id, model, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(output_tokens), 0),
       coalesce(sum(call_s), 0), coalesce(sum(cost), 0),
       count(*) FILTER (WHERE worker = 'cache' AND outcome = 'completed')
FROM attempts WHERE model IS NOT NULL GROUP BY batch_id, model;
