-- Commit times that never go back: each append stamps its events with
-- greatest(clock_timestamp(), last_time) under the log_head lock and moves
-- last_time on, so commit times follow ids even if the clock steps back or
-- a waiting append read the clock before it got the lock. `since=` relies
-- on it.
alter table log_head add column last_time timestamptz not null default '-infinity';
