-- The delivery audit (`GET /v1/events/{id}/deliveries`, `herald explain`)
-- reads every stream of one subject, open or ended, around an event.
--
-- `reset_after`: when a stream sent a reset (its resume cursor's events
-- were pruned, or never existed), the id it went on after; null when it
-- sent none. Written with the stream's end, as `last_id` is. It is what
-- tells "pruned before the stream resumed" from "written on resume".
alter table herald_streams add column reset_after bigint;

-- Every stream of a subject, oldest first (the existing subject index
-- holds open streams only).
create index herald_streams_subject on herald_streams (subject, opened_at);
