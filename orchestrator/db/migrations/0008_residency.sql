-- 0008: model residency (orchestrator/placement.py). A GPU worker's heartbeat says which
-- host it is on (machine and model server), how many models that host holds at once, which
-- it holds now (/api/ps) and which serve placed on it.
ALTER TABLE workers ADD COLUMN machine text;
ALTER TABLE workers ADD COLUMN max_loaded integer;
ALTER TABLE workers ADD COLUMN resident jsonb NOT NULL DEFAULT '[]';
ALTER TABLE workers ADD COLUMN placed text[];

-- Placement counts, per model, the pending work the cache answers (it needs no host): the
-- cached pending rows alone, with the columns the lookup needs.
CREATE INDEX interactions_pending_cached ON interactions (actor, batch_id) INCLUDE (cache_key, run_id)
    WHERE status = 'pending' AND use_cache;
