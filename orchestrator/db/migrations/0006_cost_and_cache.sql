-- 0006: what a batch costs, a credit limit on it, and the interaction cache.

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

ALTER TABLE attempts ADD COLUMN model text;    -- wavefarm_model(actor) of an AI step's attempt
ALTER TABLE attempts ADD COLUMN cost numeric;  -- at the prices in force when it was recorded; NULL: unpriced

-- The batch's spend so far (the sum of its attempts' cost, kept by store_decisions) and
-- its credit limit: reaching it pauses the batch (pause_reason budget_exceeded).
ALTER TABLE batches ADD COLUMN credit_limit numeric CHECK (credit_limit >= 0);
ALTER TABLE batches ADD COLUMN spent numeric NOT NULL DEFAULT 0;

-- cache_key: the digest of what the model is asked (system, prompt, options, format),
-- on every AI interaction. cache_digest: the digest of the model that answered it, set
-- when it completes (NULL again after `cache clear`): with cache_key, its answer's key in
-- the cache. use_cache: its step has `cache: true`, so it looks there before it is sent.
-- cached_from: the interaction whose output a cache hit reused (no foreign key: purging
-- that batch must not touch this one).
ALTER TABLE interactions ADD COLUMN cache_key text;
ALTER TABLE interactions ADD COLUMN use_cache boolean NOT NULL DEFAULT false;
ALTER TABLE interactions ADD COLUMN cached_from bigint;
ALTER TABLE interactions ADD COLUMN cache_digest text;
CREATE INDEX interactions_cached ON interactions (batch_id) WHERE cached_from IS NOT NULL;
-- The interaction cache: the answers a later identical call may reuse, by what was asked
-- and the build of the model that answered. An entry is a column of the interaction, set
-- by the transition that completes it: no statement of its own in serve's turn, and a
-- purged batch takes its entries with it.
CREATE INDEX interactions_cache ON interactions (cache_key, cache_digest) WHERE cache_digest IS NOT NULL;

-- What each live host has, name -> digest (Ollama's /api/tags; for an OpenAI-compatible
-- server the model id): which cache entries are answers of the model served today.
ALTER TABLE workers ADD COLUMN digests jsonb NOT NULL DEFAULT '{}';
