//! herald: a Server-Sent Events notification service backed by a PostgreSQL
//! event log. See `docs/ARCHITECTURE.md` and the README.
//!
//! The modules in pipeline order:
//! - [`config`]: the server's flags and environment variables.
//! - `server`: the accept loop; streams over HTTP/1.x written straight to
//!   the socket, the rest through hyper and the axum router (`http`).
//! - `http`: the axum router; publish, history and ops handlers.
//! - `request`: the request head as both ways in have it; `cors`: one CORS
//!   decision for every response.
//! - `stream`: one subscriber's stream whichever writer sends it: the
//!   request, its one description, replay, hand-over to live, the drain.
//! - `event`: topics, types, filters, data rules, the envelope, SSE frames.
//! - `log`: the PostgreSQL event log; group commit in id = commit order.
//! - `tail`: the log tail; LISTEN/NOTIFY wake-ups, reading the log after a
//!   cursor.
//! - `retention`: pruning old events, one instance at a time; the ring
//!   follows the log's floor.
//! - `hub`: in-process fan-out by topic index, the ring of recent frames.
//! - `registry`: every stream of every instance in PostgreSQL (batched
//!   records, leases, caps across instances), and control through the
//!   database: topic changes, ends, revocations.
//! - `auth`: who asks and may they: tokens, grants, caps and rates.
//! - `error`: refusals as `application/problem+json`.
//! - [`telemetry`]: tracing and the Prometheus metric set.
//! - `db`: connecting, creating the database, migrations.
//! - [`app`]: wiring it all up; [`Instance`] is what `main` and the tests
//!   start, [`signal`] what stops it.
//! - [`cli`]: the terminal client, `herald tail` and `herald publish`, and
//!   the whole command line.
//!
//! Only what `main`, the tests and the benchmark harness start is public;
//! the rest is the crate's own, so the compiler sees what is unused.

pub mod app;
mod auth;
pub mod cli;
pub mod config;
mod cors;
mod db;
mod error;
mod event;
mod http;
mod hub;
mod log;
mod registry;
mod request;
mod retention;
mod server;
pub mod signal;
mod stream;
mod tail;
pub mod telemetry;

pub use app::{Instance, run};
pub use config::Config;
/// The advisory lock key that makes one instance prune at a time.
pub use retention::PRUNE_LOCK;
