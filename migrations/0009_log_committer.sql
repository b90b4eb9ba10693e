-- The cluster's committer (issue 26; `src/log/append/cluster.rs`).
--
-- The instances that share this log elect one of them to commit every
-- append: the one that holds a session-level advisory lock. It writes here
-- where the others reach it and the secret they show it; they send it
-- their publish requests, and commit themselves while it cannot be reached.
-- Ids, commit order and "2xx means committed" do not depend on this row:
-- every append still locks `log_head`, whoever sends it.
create table log_committer (
    -- exactly one row
    singleton boolean primary key default true check (singleton),
    -- the committer's instance id (`herald_instances.id`)
    instance text not null,
    -- the base URL the others reach it at (`--advertise-url`)
    url text not null,
    -- what the others show it (`Authorization: Bearer`); made by
    -- PostgreSQL (`gen_random_uuid`, a strong random source) at each election
    secret text not null,
    since timestamptz not null default now()
);
