-- W3C Trace Context kept with each event (README, "Tracing"): the
-- publisher's `traceparent` and `tracestate`, checked on the way in
-- (`src/event/trace.rs`), null when it sent none or an invalid one. They
-- travel in the event's envelope, and a keyed event copied to
-- `idempotency_keys` keeps them, so a repeat answers with them too.
--
-- Nullable columns without a default: adding them rewrites nothing, so the
-- migration is instant on a log of any size.
alter table events
    add column traceparent text,
    add column tracestate text;

alter table idempotency_keys
    add column traceparent text,
    add column tracestate text;
