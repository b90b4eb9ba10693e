-- The stream registry (src/registry/): every stream any instance serves,
-- named or not, for the admin API, the caps across instances, and an audit.
-- It is off the delivery path: a stream delivers before its row commits,
-- and rows are written in batches by one writer per instance.

-- One row per running instance, kept alive by its heartbeat. A stream whose
-- instance's lease has passed is counted as ended (`instance_lost`).
CREATE TABLE herald_instances (
    id          text PRIMARY KEY,
    name        text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL
);

-- One row per stream connection. A named stream that reconnects has one row
-- per connection, all with its handle. `id` is `<instance id>.<n>`, made by
-- the instance, so the row can be written after the stream starts.
CREATE TABLE herald_streams (
    id           text PRIMARY KEY,
    handle       text,
    subject      text,
    instance     text NOT NULL,
    client_addr  text NOT NULL,
    user_agent   text,
    topics       text[] NOT NULL,
    opened_at    timestamptz NOT NULL,
    start_cursor bigint NOT NULL,
    resumed      boolean NOT NULL,
    ended_at     timestamptz,
    end_reason   text,
    last_id      bigint
);
CREATE INDEX herald_streams_open_subject ON herald_streams (subject, opened_at)
    WHERE ended_at IS NULL;
CREATE INDEX herald_streams_open_addr ON herald_streams (client_addr, opened_at)
    WHERE ended_at IS NULL;
CREATE INDEX herald_streams_open_instance ON herald_streams (instance)
    WHERE ended_at IS NULL;
CREATE INDEX herald_streams_handle ON herald_streams (handle, opened_at)
    WHERE handle IS NOT NULL;
CREATE INDEX herald_streams_ended ON herald_streams (ended_at)
    WHERE ended_at IS NOT NULL;

-- A named stream across its connections: whose it is, its topics now, and
-- whether it was ended for good (replaced, revoked, ended by an admin), in
-- which case a reconnect is answered 409.
CREATE TABLE herald_handles (
    handle      text PRIMARY KEY,
    subject     text,
    topics      text[] NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    end_reason  text
);
CREATE INDEX herald_handles_subject ON herald_handles (subject);

-- Every topic change of a named stream: its topics apply to the events with
-- an id above `effective_at`. The first row is the stream's topics at open.
CREATE TABLE herald_topic_changes (
    handle       text NOT NULL REFERENCES herald_handles ON DELETE CASCADE,
    effective_at bigint NOT NULL,
    topics       text[] NOT NULL,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (handle, effective_at)
);

-- Subjects whose tokens issued before `revoked_at` are refused until
-- `expires_at` (`--revocation-window`).
CREATE TABLE herald_revocations (
    subject    text PRIMARY KEY,
    revoked_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Control commands for the instance that holds a stream: change its topics,
-- end it, revoke a subject; and the holder's answers (`reply_to`). Every
-- instance reads the rows after its cursor, woken by NOTIFY herald_control
-- or by its timer, as the log tail reads events.
CREATE TABLE herald_control (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    kind         text NOT NULL,
    target       text,
    subject      text,
    topics       text[],
    reason       text,
    reply_to     bigint,
    effective_at bigint,
    cap          integer
);
CREATE INDEX herald_control_at ON herald_control (at);
