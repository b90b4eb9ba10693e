-- `since=10m` and `since=<RFC 3339>` start a stream or history read at the
-- first event committed at or after a time: find it through an index, not
-- a scan. Commit times follow ids (both are taken under the log_head lock).
create index events_time on events (time);
