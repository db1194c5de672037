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

-- What an attempt cost: its tokens at the token prices plus its call time at the hourly
-- price, at the prices in force when it was recorded. NULL when its model has no price
-- (it costs 0, and `status` says it is unpriced); scripts have no model and no cost.
CREATE FUNCTION wavefarm_cost(model text, prompt_tokens integer, output_tokens integer, call_s double precision)
RETURNS numeric LANGUAGE sql STABLE AS $$
    SELECT coalesce(p.input_per_1m, 0) * coalesce(prompt_tokens, 0) / 1000000
         + coalesce(p.output_per_1m, 0) * coalesce(output_tokens, 0) / 1000000
         + coalesce(p.per_hour, 0) * coalesce(call_s, 0)::numeric / 3600
    FROM (SELECT * FROM prices WHERE prices.model = wavefarm_model($1) ORDER BY id DESC LIMIT 1) p
$$;

ALTER TABLE attempts ADD COLUMN model text;    -- wavefarm_model(actor) of an AI step's attempt
ALTER TABLE attempts ADD COLUMN cost numeric;  -- wavefarm_cost at the time it was recorded

-- The batch's spend so far (the sum of its attempts' cost, kept by store_decisions) and
-- its credit limit: reaching it pauses the batch (pause_reason budget_exceeded).
ALTER TABLE batches ADD COLUMN credit_limit numeric CHECK (credit_limit >= 0);
ALTER TABLE batches ADD COLUMN spent numeric NOT NULL DEFAULT 0;

-- cache_key: the digest of what the model is asked (system, prompt, options, format),
-- on every AI interaction; with the digest of the model that answered, the key of its
-- answer in cache_entries. use_cache: its step has `cache: true`, so it looks there
-- before it is sent. cached_from: the interaction whose output a cache hit reused (no
-- foreign key: purging that batch must not touch this one).
ALTER TABLE interactions ADD COLUMN cache_key text;
ALTER TABLE interactions ADD COLUMN use_cache boolean NOT NULL DEFAULT false;
ALTER TABLE interactions ADD COLUMN cached_from bigint;
CREATE INDEX interactions_cached ON interactions (batch_id) WHERE cached_from IS NOT NULL;

-- What each live host has, name -> digest (Ollama's /api/tags; for an OpenAI-compatible
-- server the model id): which cache entries are answers of the model served today.
ALTER TABLE workers ADD COLUMN digests jsonb NOT NULL DEFAULT '{}';

-- The interaction cache: one completed answer per (prompt digest, model digest).
CREATE TABLE cache_entries (
    key             text NOT NULL,
    digest          text NOT NULL,
    model           text NOT NULL,
    interaction_id  bigint NOT NULL REFERENCES interactions (id),
    run_id          bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    hits            bigint NOT NULL DEFAULT 0,
    last_hit_at     timestamptz,
    PRIMARY KEY (key, digest)
);
CREATE INDEX cache_entries_interaction ON cache_entries (interaction_id);
CREATE INDEX cache_entries_model ON cache_entries (model, created_at);
