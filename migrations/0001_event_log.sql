-- The event log: every event herald ever acknowledged, in commit order.
--
-- Ids are not taken from a sequence. A sequence value is taken at INSERT, not
-- at commit, so a reader at `id > 10` could pass over id 10 if it committed
-- after id 11. Instead every append locks the single `log_head` row, reads
-- `last_id`, writes its events with the next ids and moves `last_id` on, all
-- in one transaction. The row lock is held until commit, so the next append
-- (from any instance) only gets its ids after this one is visible: id order
-- is commit order, and ids are dense.

create table log_head (
    -- exactly one row
    singleton boolean primary key default true check (singleton),
    -- the highest id ever assigned; never goes back, even if events are pruned
    last_id bigint not null default 0 check (last_id >= 0),
    -- every event with an id at or below this has been pruned by retention
    pruned_through bigint not null default 0 check (pruned_through >= 0)
);

insert into log_head default values;

create table events (
    id bigint primary key check (id > 0),
    topic text not null check (length(topic) between 1 and 256),
    type text not null check (length(type) between 1 and 64),
    -- `json`, not `jsonb`: the publisher's key order and number spelling are
    -- kept byte for byte (herald stores it compacted onto one line)
    data json not null,
    -- optional idempotency key: a repeated key returns the original event
    key text,
    -- position in the batch when the key came from an Idempotency-Key header
    -- naming a whole batch; null for a key of one event
    key_index integer check (key_index >= 0),
    time timestamptz not null
);

-- at most one event per (key, position); appends also check under the
-- log_head lock, this index is the last line of defence
create unique index events_idempotency on events (key, coalesce(key_index, -1))
    where key is not null;

-- replay and history filtered by topic read in id order within a topic
create index events_topic_id on events (topic text_pattern_ops, id);
