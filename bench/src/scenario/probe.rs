//! What herald and PostgreSQL do while the `publish` scenario's publishers
//! run, one instance or several on one database (issue 26: "find out where
//! the time goes": lock waits, group sizes per instance, commits per
//! second):
//! - each instance's `/metrics`, read before and after: the deltas of the
//!   histograms `herald_append_group_events` and
//!   `herald_append_transaction_seconds` (`_sum`, `_count`) are its append
//!   commits, their mean size in events, their mean time (from the
//!   committer sending the group to its answer, lock wait included) and the
//!   share of the window its committer spent in a transaction;
//! - PostgreSQL, on a connection of its own (`application_name`
//!   `herald-bench-probe`), when the harness knows the database: every
//!   50 ms, herald's backends in `pg_stat_activity`
//!   (`application_name` `herald` or `herald/NAME`, one name per instance):
//!   how many wait on a row lock (`Lock` `transactionid` or `tuple`: an
//!   append waiting for the `log_head` row another transaction holds; the
//!   first waiter waits on the holder's transaction id, the ones behind it
//!   on the tuple), how many on WAL (`WALSync`, `WALWrite`: a commit's
//!   flush, its own or the one it waits behind), how many run a statement;
//!   and `pg_stat_database.xact_commit` and `pg_stat_wal.wal_sync`, before
//!   and after.
//!
//! It costs one short query every 50 ms and two scrapes per instance.
//! PostgreSQL's cumulative counters reach `pg_stat_database` up to a second
//! late (backends flush them at most once a second), so over a short window
//! its commits per second are approximate; the appends' own, from herald's
//! metrics, are exact. `xact_commit` counts every transaction in the
//! database: the appends, the instances' reads after each notification,
//! and this probe's samples (20 a second).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::churn::gauge;
use crate::cluster::Cluster;
use crate::http::{self, Conn};
use crate::report::{AppendStats, ClusterStats, InstanceStats, PublishStats};

mod activity;

use activity::DbProbe;

/// Longest wait for one answer from `/metrics`.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
const GROUP_EVENTS: &str = "herald_append_group_events";
const TRANSACTION_SECONDS: &str = "herald_append_transaction_seconds";

/// An append histogram's `_sum` and `_count` in one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Appends {
    pub events: f64,
    pub commits: f64,
    pub seconds: f64,
}

impl Appends {
    /// From a Prometheus text exposition; `None` without the histograms.
    pub fn parse(text: &str) -> Option<Self> {
        Some(Self {
            events: gauge(text, &format!("{GROUP_EVENTS}_sum"))?,
            commits: gauge(text, &format!("{GROUP_EVENTS}_count"))?,
            seconds: gauge(text, &format!("{TRANSACTION_SECONDS}_sum"))?,
        })
    }

    /// What happened from `before` to `self`, over `window`.
    pub fn since(&self, before: &Self, window: Duration) -> AppendStats {
        let commits = (self.commits - before.commits).max(0.0);
        let events = (self.events - before.events).max(0.0);
        let seconds = (self.seconds - before.seconds).max(0.0);
        let per_commit = |v: f64| if commits > 0.0 { v / commits } else { 0.0 };
        let secs = window.as_secs_f64().max(1e-9);
        AppendStats {
            commits: commits as u64,
            events: events as u64,
            commits_per_sec: commits / secs,
            group_events_mean: per_commit(events),
            transaction_ms_mean: per_commit(seconds) * 1000.0,
            committer_busy: seconds / secs,
        }
    }
}

/// A probe started before the publishers; [`Probe::finish`] after them.
pub(super) struct Probe {
    cluster: Arc<Cluster>,
    started: Instant,
    before: Vec<Option<Appends>>,
    db: Option<DbProbe>,
}

impl Probe {
    /// Reads each instance's metrics and (when the database is known)
    /// starts sampling its backends.
    pub(super) async fn start(cluster: Arc<Cluster>) -> Self {
        let before = scrape_all(&cluster, true).await;
        let db = match &cluster.database_url {
            Some(url) => match DbProbe::start(url).await {
                Ok(db) => Some(db),
                Err(e) => {
                    eprintln!("probe: PostgreSQL will not be sampled: {e:#}");
                    None
                }
            },
            None => None,
        };
        Self {
            cluster,
            started: Instant::now(),
            before,
            db,
        }
    }

    /// Stops sampling, reads the metrics again and puts it together with
    /// each instance's publishers (`per_instance`, in instance order).
    pub(super) async fn finish(self, per_instance: Vec<PublishStats>) -> ClusterStats {
        let window = self.started.elapsed();
        let after = scrape_all(&self.cluster, false).await;
        let (tally, database) = match self.db {
            Some(db) => {
                let (tally, stats) = db.finish(window).await;
                (Some(tally), stats)
            }
            None => (None, None),
        };
        let appends: Vec<Option<AppendStats>> = self
            .before
            .iter()
            .zip(&after)
            .map(|(b, a)| Some(a.as_ref()?.since(b.as_ref()?, window)))
            .collect();
        let append_commits_per_sec = appends
            .iter()
            .map(|a| a.as_ref().map(|a| a.commits_per_sec))
            .sum::<Option<f64>>();
        let instances = self
            .cluster
            .members
            .iter()
            .zip(per_instance)
            .zip(appends)
            .map(|((m, publish), appends)| InstanceStats {
                name: m.application_name(),
                addr: m.target.addr().to_string(),
                publish,
                appends,
                waits: tally.as_ref().map(|t| t.of(&m.application_name())),
                cpu_percent: None,
            })
            .collect();
        ClusterStats {
            instances: self.cluster.len(),
            window_s: window.as_secs_f64(),
            per_instance: instances,
            append_commits_per_sec,
            database,
        }
    }
}

/// Each instance's append histograms, in instance order. `before`: an
/// instance that answers without them has appended nothing yet (a
/// histogram appears at its first value), which counts as zero.
async fn scrape_all(cluster: &Cluster, before: bool) -> Vec<Option<Appends>> {
    let mut out = Vec::with_capacity(cluster.len());
    for m in &cluster.members {
        let text = scrape(m.target.addr()).await;
        // Before any append, and on an instance that sends its groups to
        // the cluster's committer (issue 26), herald exports no append
        // histogram: none committed there.
        out.push(text.and_then(|t| match Appends::parse(&t) {
            None if before || t.contains("herald_append_committer") => Some(Appends::default()),
            parsed => parsed,
        }));
    }
    out
}

/// `/metrics` of the server at `addr`; `None` without an answer `200`.
async fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    let read = async {
        let mut conn = Conn::open(addr, None).await.ok()?;
        let res = conn
            .roundtrip(&http::get("/metrics", &addr.to_string(), &[]))
            .await
            .ok()?;
        (res.status == 200).then(|| String::from_utf8_lossy(&res.body).into_owned())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, read).await.ok()?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_deltas_give_commits_group_size_and_busy_time() {
        let text = "# TYPE herald_append_group_events histogram\n\
                    herald_append_group_events_bucket{le=\"1\"} 3\n\
                    herald_append_group_events_sum 1200\n\
                    herald_append_group_events_count 100\n\
                    herald_append_transaction_seconds_bucket{le=\"0.001\"} 4\n\
                    herald_append_transaction_seconds_sum 1.5\n\
                    herald_append_transaction_seconds_count 100\n";
        let before = Appends {
            events: 200.0,
            commits: 20.0,
            seconds: 0.5,
        };

        let after = Appends::parse(text).expect("both histograms");
        let d = after.since(&before, Duration::from_secs(2));

        assert_eq!((d.commits, d.events), (80, 1000));
        assert!((d.commits_per_sec - 40.0).abs() < 1e-9, "{d:?}");
        assert!((d.group_events_mean - 12.5).abs() < 1e-9, "{d:?}");
        assert!((d.transaction_ms_mean - 12.5).abs() < 1e-9, "{d:?}");
        assert!((d.committer_busy - 0.5).abs() < 1e-9, "{d:?}");
        assert_eq!(Appends::parse("herald_streams_active 3\n"), None);
    }
}
