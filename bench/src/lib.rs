//! herald-bench: a load and correctness harness for herald, which drives
//! nchan with the same workloads so the two compare side by side. See
//! `bench/README.md` for how to run it and what each number means.
//!
//! The modules, from the wire up:
//! - [`net`]: sockets from loopback source addresses; the fd budget.
//! - [`http`]: hand-written HTTP/1.1 requests, response heads, chunked bodies.
//! - [`sse`]: an incremental `text/event-stream` frame parser.
//! - [`payload`]: the marker each event carries (publisher, sequence, time).
//! - [`target`]: herald and nchan behind one [`target::Target`] trait.
//! - [`subscriber`], [`publisher`]: the two kinds of client; [`group`]: what
//!   a group of subscribers shares (counters, timeline, reconnect storm).
//! - [`track`], [`stats`]: correctness counters and latency percentiles.
//! - [`procfs`]: the server's memory and CPU from `/proc`; [`postgres`]:
//!   the postmaster whose CPU is measured beside herald's.
//! - [`workload`]: the scenario and its size, read by both of the next two.
//! - [`scenario`]: publish, fanout, idle, resume, storm, peruser,
//!   peruser-storm, retention, churn.
//! - [`report`]: what a run found (the JSON); [`table`]: the same for people;
//!   [`rounds`]: the medians of `compare --rounds`.
//! - [`servers`]: starting herald and nginx+nchan for a comparison;
//!   [`cluster`]: the instances a run drives (several herald instances on
//!   one database, issue 26).

pub mod cluster;
pub mod group;
pub mod http;
pub mod net;
pub mod payload;
pub mod postgres;
pub mod procfs;
pub mod publisher;
pub mod report;
pub mod rounds;
pub mod scenario;
pub mod servers;
pub mod sse;
pub mod stats;
pub mod subscriber;
pub mod table;
pub mod target;
pub mod track;
pub mod workload;

pub use report::Report;
pub use target::{Kind, Target};
pub use workload::{Params, Scenario};
