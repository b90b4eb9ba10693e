//! Integration tests: each starts herald on port 0 against a fresh
//! PostgreSQL database of its own and talks to it over real HTTP.
//! Set `TEST_LOG=1` to see the server's logs.

#[macro_use]
mod helpers;

mod audit;
mod auth;
mod capacity;
mod cli;
mod clients;
mod cluster;
mod commit;
mod committer;
mod connections;
mod cors;
mod delivery;
mod deploy;
mod docs;
mod faults;
mod history;
mod hostile;
mod idempotency;
mod observability;
mod ops;
mod otel;
mod outage;
mod proxy;
mod publish;
mod refusals;
mod resets;
mod resume;
mod retention;
mod roundtrip;
mod since;
mod stream;
mod streams;
mod trace;
mod wire;
mod writers;
