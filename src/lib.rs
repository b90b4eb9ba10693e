//! herald: a Server-Sent Events notification service backed by a PostgreSQL
//! event log. See `DESIGN.md` in the shared docs and the README.
//!
//! The modules in pipeline order:
//! - [`config`]: the server's flags and environment variables.
//! - [`http`]: the router; publish, stream, history and ops handlers.
//! - [`event`]: topics, types, filters, the JSON envelope and SSE frames.
//! - [`log`]: the PostgreSQL event log; group commit in id = commit order.
//! - [`listener`]: LISTEN/NOTIFY wake-ups, reading the log after a cursor.
//! - [`hub`]: in-process fan-out to bounded subscriber queues, recent-frame ring.
//! - [`subscription`]: one stream: replay, hand-over to live, heartbeats, drain.
//! - [`error`]: refusals as `application/problem+json`.
//! - [`telemetry`]: tracing and the Prometheus metric set.
//! - [`db`]: connecting, creating the database, migrations.
//! - [`server`]: the accept loop; stream requests straight to the socket,
//!   the rest through hyper and axum.
//! - [`app`]: wiring it all up; [`Server`] is what `main` and the tests start.
//! - [`cli`]: the terminal client, `herald tail` and `herald publish`, and
//!   the whole command line.

pub mod app;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod event;
pub mod http;
pub mod hub;
pub mod listener;
pub mod log;
pub mod server;
pub mod subscription;
pub mod telemetry;

pub use app::{Server, run};
pub use config::Config;
