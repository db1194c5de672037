-- 0005: retention. `orchestrator purge --batch ID` deletes a finished batch whole.
--
-- The events table already lets a DELETE through only in a transaction that did
-- SET LOCAL wavefarm.purging = 'on' (0003, wavefarm_events_append_only); an UPDATE is
-- refused always. What a purge still lacked is a way to find a batch's own events that
-- belong to no run (paused, resumed, priority_set, ...) without reading the whole
-- log: this partial index. It holds only those few rows, so the hot path (an event per
-- status change, all with a run) pays nothing for it.
CREATE INDEX events_batch_level ON events (batch_id) WHERE run_id IS NULL;
