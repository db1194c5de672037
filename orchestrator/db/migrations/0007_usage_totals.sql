-- 0007: usage totals per batch and model, for Prometheus's counters (orchestrator/metrics.py).

-- What the farm's models used and cost, per batch and model, kept by a trigger on every
-- insert into attempts: Prometheus's counters are sums over these rows (a few per batch),
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

CREATE FUNCTION wavefarm_count_usage() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_totals AS u (batch_id, model, attempts, prompt_tokens, output_tokens, call_s, cost, cache_hits)
    SELECT batch_id, model, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(output_tokens), 0),
           coalesce(sum(call_s), 0), coalesce(sum(cost), 0),
           count(*) FILTER (WHERE worker = 'cache' AND outcome = 'completed')
    FROM new_attempts WHERE model IS NOT NULL
    GROUP BY batch_id, model ORDER BY batch_id, model  -- one lock order for concurrent appliers
    ON CONFLICT (batch_id, model) DO UPDATE SET
        attempts = u.attempts + excluded.attempts, prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
        output_tokens = u.output_tokens + excluded.output_tokens, call_s = u.call_s + excluded.call_s,
        cost = u.cost + excluded.cost, cache_hits = u.cache_hits + excluded.cache_hits;
    RETURN NULL;
END $$;

CREATE TRIGGER attempts_usage AFTER INSERT ON attempts
    REFERENCING NEW TABLE AS new_attempts
    FOR EACH STATEMENT EXECUTE FUNCTION wavefarm_count_usage();

-- What was recorded before this migration.
INSERT INTO usage_totals (batch_id, model, attempts, prompt_tokens, output_tokens, call_s, cost, cache_hits)
SELECT batch_id, model, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(output_tokens), 0),
       coalesce(sum(call_s), 0), coalesce(sum(cost), 0),
       count(*) FILTER (WHERE worker = 'cache' AND outcome = 'completed')
FROM attempts WHERE model IS NOT NULL GROUP BY batch_id, model;
