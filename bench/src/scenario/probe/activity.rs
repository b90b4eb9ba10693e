//! The probe's view from PostgreSQL: herald's backends in
//! `pg_stat_activity`, sampled on a connection of the probe's own, and the
//! database's cumulative counters before and after (see `probe.rs`).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::report::{DatabaseStats, WaitStats};

/// How often herald's backends are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The probe's own `application_name`, which the samples leave out.
const PROBE_NAME: &str = "herald-bench-probe";
/// herald's backends in the run's database, per `application_name`: how
/// many wait on a row lock, how many on WAL, how many run a statement.
const ACTIVITY: &str = "select application_name, \
       count(*) filter (where wait_event_type = 'Lock' \
                          and wait_event in ('transactionid', 'tuple')), \
       count(*) filter (where wait_event in ('WALSync', 'WALWrite')), \
       count(*) filter (where state = 'active') \
     from pg_stat_activity \
     where datname = current_database() \
       and (application_name = 'herald' or application_name like 'herald/%') \
     group by application_name";

/// One instance's backends in one sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backends {
    pub lock: i64,
    pub wal: i64,
    pub active: i64,
}

/// The samples, summed: per `application_name`, and over all of herald's
/// backends.
#[derive(Debug, Default)]
pub struct Tally {
    samples: u64,
    per_app: HashMap<String, Counts>,
    all: Counts,
}

/// Samples in which some backend waited on a row lock, waited on WAL, ran
/// a statement; and the lock waiters summed over the samples.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    lock_samples: u64,
    lock_waiters: u64,
    wal_samples: u64,
    active_samples: u64,
}

impl Counts {
    fn add(&mut self, b: &Backends) {
        self.lock_samples += u64::from(b.lock > 0);
        self.lock_waiters += u64::try_from(b.lock).unwrap_or(0);
        self.wal_samples += u64::from(b.wal > 0);
        self.active_samples += u64::from(b.active > 0);
    }

    fn stats(self, samples: u64) -> WaitStats {
        let of = |n: u64| n as f64 / samples.max(1) as f64;
        WaitStats {
            samples,
            lock_wait_fraction: of(self.lock_samples),
            lock_waiters_mean: of(self.lock_waiters),
            wal_wait_fraction: of(self.wal_samples),
            active_fraction: of(self.active_samples),
        }
    }
}

impl Tally {
    /// Adds one sample: each `application_name`'s backends.
    pub fn add(&mut self, rows: &[(String, Backends)]) {
        self.samples += 1;
        let mut all = Backends::default();
        for (app, b) in rows {
            self.per_app.entry(app.clone()).or_default().add(b);
            all.lock += b.lock;
            all.wal += b.wal;
            all.active += b.active;
        }
        self.all.add(&all);
    }

    /// The backends of `application_name` over the samples.
    pub fn of(&self, application_name: &str) -> WaitStats {
        self.per_app
            .get(application_name)
            .copied()
            .unwrap_or_default()
            .stats(self.samples)
    }

    /// All of herald's backends over the samples: a sample counts as a
    /// lock wait when any backend waited.
    pub fn all(&self) -> WaitStats {
        self.all.stats(self.samples)
    }
}

/// PostgreSQL's cumulative counters for the database.
#[derive(Debug, Clone, Copy)]
struct DbCounters {
    xact_commit: i64,
    wal_sync: Option<i64>,
}

/// Samples herald's backends until [`DbProbe::finish`].
pub(super) struct DbProbe {
    before: DbCounters,
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Option<PgConnection>>,
}

impl DbProbe {
    /// Reads the counters and starts sampling.
    pub(super) async fn start(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)?.application_name(PROBE_NAME);
        let mut conn = options.connect().await?;
        let before = counters(&mut conn).await?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample(conn, tally.clone(), stop.clone()));
        Ok(Self {
            before,
            tally,
            stop,
            task,
        })
    }

    /// Stops sampling; the samples, and the counters' deltas over `window`.
    pub(super) async fn finish(self, window: Duration) -> (Tally, Option<DatabaseStats>) {
        self.stop.cancel();
        let conn = self.task.await.ok().flatten();
        let tally = std::mem::take(&mut *self.tally.lock().unwrap_or_else(PoisonError::into_inner));
        let after = match conn {
            Some(mut conn) => {
                let after = counters(&mut conn).await.ok();
                let _ = conn.close().await;
                after
            }
            None => None,
        };
        let stats = after.map(|after| {
            let secs = window.as_secs_f64().max(1e-9);
            DatabaseStats {
                xact_commits_per_sec: (after.xact_commit - self.before.xact_commit) as f64 / secs,
                wal_syncs_per_sec: after
                    .wal_sync
                    .zip(self.before.wal_sync)
                    .map(|(a, b)| (a - b) as f64 / secs),
                sample_every_ms: SAMPLE_EVERY.as_secs_f64() * 1000.0,
                waits: tally.all(),
            }
        });
        (tally, stats)
    }
}

/// Samples herald's backends until `stop`; hands the connection back for
/// the last read of the counters (`None` if it broke).
async fn sample(
    mut conn: PgConnection,
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
) -> Option<PgConnection> {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Some(conn),
            _ = tick.tick() => {}
        }
        let rows: Vec<(String, i64, i64, i64)> =
            match sqlx::query_as(ACTIVITY).fetch_all(&mut conn).await {
                Ok(rows) => rows,
                Err(e) => {
                    eprintln!("probe: sampling pg_stat_activity stopped: {e}");
                    return None;
                }
            };
        let rows: Vec<(String, Backends)> = rows
            .into_iter()
            .map(|(app, lock, wal, active)| (app, Backends { lock, wal, active }))
            .collect();
        tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(&rows);
    }
}

async fn counters(conn: &mut PgConnection) -> anyhow::Result<DbCounters> {
    // A fresh snapshot of the cumulative statistics, not the cached one.
    sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await?;
    let (xact_commit,): (i64,) = sqlx::query_as(
        "select xact_commit from pg_stat_database where datname = current_database()",
    )
    .fetch_one(&mut *conn)
    .await?;
    // `pg_stat_wal.wal_sync` is gone in PostgreSQL 18 (now in `pg_stat_io`).
    let wal_sync = sqlx::query_as::<_, (i64,)>("select wal_sync from pg_stat_wal")
        .fetch_one(&mut *conn)
        .await
        .ok()
        .map(|(n,)| n);
    Ok(DbCounters {
        xact_commit,
        wal_sync,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rows: &[(&str, i64, i64, i64)]) -> Vec<(String, Backends)> {
        rows.iter()
            .map(|&(app, lock, wal, active)| (app.to_owned(), Backends { lock, wal, active }))
            .collect()
    }

    #[test]
    fn lock_waits_are_counted_per_instance_and_over_all() {
        let mut t = Tally::default();
        t.add(&sample(&[
            ("herald/bench-1", 0, 1, 1),
            ("herald/bench-2", 1, 0, 1),
        ]));
        t.add(&sample(&[
            ("herald/bench-1", 2, 0, 2),
            ("herald/bench-2", 0, 1, 1),
        ]));
        t.add(&sample(&[]));
        t.add(&sample(&[("herald/bench-1", 0, 0, 0)]));

        let one = t.of("herald/bench-1");
        let two = t.of("herald/bench-2");
        let all = t.all();
        let absent = t.of("herald/bench-3");

        assert_eq!(all.samples, 4);
        assert!((one.lock_wait_fraction - 0.25).abs() < 1e-9, "{one:?}");
        assert!((one.lock_waiters_mean - 0.5).abs() < 1e-9, "{one:?}");
        assert!((two.wal_wait_fraction - 0.25).abs() < 1e-9, "{two:?}");
        assert!((all.lock_wait_fraction - 0.5).abs() < 1e-9, "{all:?}");
        assert!((all.lock_waiters_mean - 0.75).abs() < 1e-9, "{all:?}");
        assert!((all.active_fraction - 0.5).abs() < 1e-9, "{all:?}");
        assert_eq!(absent.samples, 4);
        assert!(absent.lock_wait_fraction.abs() < 1e-9);
    }
}
