-- Retention (`--retention`, `--retention-count`): events past the configured
-- age or count are deleted by one instance at a time, in batches of a few
-- thousand by id range, each batch its own short transaction that deletes
-- `id > floor and id <= upto` and then moves `log_head.pruned_through` to
-- `upto` (src/log/prune.rs).
--
-- Why batched deletes and not range partitions by id:
-- - Every scale. `--retention 2s` on a log of three events must remove them
--   within seconds; a partition can only go whole, so a log smaller than one
--   partition would keep everything. Deletes remove exactly what is due.
-- - No maintenance job and no DDL on the hot table. Partitions need new ones
--   created ahead of the ids, and no DEFAULT partition to catch a missed one,
--   because `DETACH PARTITION ... CONCURRENTLY` refuses to run while one
--   exists; it also cannot run in a transaction and needs `FINALIZE` if
--   interrupted, and `DROP TABLE` of an attached partition takes ACCESS
--   EXCLUSIVE on the parent, which would stall every publish and replay.
--   A DELETE takes ROW EXCLUSIVE on `events`, which conflicts with neither
--   the committer's INSERT nor any reader.
-- - Readers can tell. The floor moves in the same transaction as the delete,
--   so a snapshot sees both or neither; readers take the floor in the same
--   statement as their events, and a cursor below it gets a reset frame (or
--   a 410 from history) instead of a silent gap.
-- What it costs, against partitions: deleted rows are dead tuples until
-- vacuum, and the space is reused, not returned (the table file does not
-- shrink); a prune writes WAL for every row. BENCHMARKS.md has the sizes
-- and publish latencies with a prune of a million events.
--
-- Vacuum sooner than the default (20 % of the table dead): a week of
-- retention deletes about a seventh of the log every week, in rounds every
-- 30 s, so the default would let dead rows pile up for days before their
-- space is reused.
alter table events set (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000
);
