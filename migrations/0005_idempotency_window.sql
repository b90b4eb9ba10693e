-- Idempotency keys outlive their events (README, "Retention"). A key lives
-- on its event's row in `events`, so pruning the event would forget the key,
-- and with `--retention 2s` a publisher retrying after 3 s would store its
-- event twice. When the pruner deletes a keyed event younger than the key
-- window (`--idempotency-window`, default 24 h), it copies the row here in
-- the same statement, so a repeat still gets the original event (`200`, as
-- the contract says: "returns the original event"); the pruner deletes rows
-- here once they are older than the window.
--
-- Why a copy of the whole event and not just the key and its id: a repeat
-- answers with the stored event, data included. Only keyed events pruned
-- within the window are copied, so the table holds at most a window of
-- keyed publishes, and nothing at all while events live longer than the
-- window (the default: a week of retention, a day of keys).
--
-- Appends look keys up here and in `events` under the `log_head` lock; an
-- event moves from one table to the other in one transaction, so a lookup
-- sees it in exactly one of them.
create table idempotency_keys (
    id bigint primary key,
    topic text not null,
    type text not null,
    data json not null,
    key text not null,
    key_index integer,
    time timestamptz not null
);

create unique index idempotency_keys_key on idempotency_keys (key, coalesce(key_index, -1));

-- expiry deletes the oldest first
create index idempotency_keys_time on idempotency_keys (time);
