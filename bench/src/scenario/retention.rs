//! `retention` (issue 11): a prune of a million events or more from a log
//! of ten million, while publishers write at 5,000 events/s and a few
//! clients replay near the floor. herald only; the scenario starts its
//! herald instances itself (through a [`Launcher`]), because the log must
//! be filled before herald reads it.
//!
//! 1. A fresh database gets herald's schema from a herald started once
//!    with `--retention=0` and stopped at once.
//! 2. The log is filled straight through SQL, **bypassing herald**:
//!    `--fill` events (`generate_series` in chunks of 500,000, ids dense
//!    from 1 as herald assigns them) on 16 topics, stamped over the hour
//!    before now in id order; `log_head` is moved to match; then `VACUUM
//!    ANALYZE`, as a table that has lived would be, and a `CHECKPOINT`, so
//!    the fill's writes do not land in the baseline.
//! 3. The serving herald starts with `--retention=0`: it never prunes, it
//!    only follows the floor. Publishers run at `--rate`; after `--settle`
//!    of warm-up, the baseline lasts `--duration`.
//! 4. A second herald starts on the same database with `--retention=0
//!    --retention-count=N`, N chosen so that `--prune` events are due at
//!    once: its first round prunes them. This is how a deployment of
//!    several instances prunes (one instance at a time, any of them), and
//!    the pruning work on PostgreSQL is the same as in a single instance;
//!    the second herald's start (a ring warm-up) falls in the prune window,
//!    which makes that window slightly pessimistic. The window ends when
//!    `pruned_through` reaches `--prune`.
//! 5. Throughout, [`REPLAY_CLIENTS`] clients each resume a replay every
//!    [`REPLAY_EVERY`] with `Last-Event-ID` a little above the floor, and
//!    every wait is timed: request to first frame, and between frames.
//! 6. Table and index sizes before the prune, after it, and after a
//!    `VACUUM`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use sqlx::{Connection, PgConnection};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::http::{self, BodyDecoder, Conn};
use crate::net::{self, Sources};
use crate::publisher::{self, Plan, Topics};
use crate::report::{PublishStats, Report, RetentionStats, TableSizes};
use crate::servers::{self, Options};
use crate::sse;
use crate::stats::{self, Percentiles};
use crate::target::{self, Kind, Target};
use crate::track::Correctness;
use crate::workload::{Params, Scenario};

/// Rows per fill statement.
const FILL_CHUNK: u64 = 500_000;
/// Topics of the filled events; replay client i reads topic i mod this.
const FILL_TOPICS: u64 = 16;
/// Clients replaying near the floor, one replay after another each.
pub const REPLAY_CLIENTS: usize = 4;
/// Each replay client starts a replay this often (or as soon as the one
/// before ends, if it took longer): a few clients resuming now and then,
/// as after a deploy, not a replay load that by itself takes the machine
/// (4 clients back to back, ~70 replays/s of 500 events, left PostgreSQL
/// no CPU for the publishers on this 2-core machine, with or without a
/// prune: that measured the machine, not the prune).
const REPLAY_EVERY: Duration = Duration::from_millis(500);
/// A replay resumes at most this far above the floor...
const REPLAY_AHEAD: u64 = 10_000;
/// ...and reads at most this many events of its topic.
const REPLAY_EVENTS: u64 = 500;
/// Longest wait for the prune to begin, and then to end.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a single replay may take.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// A boxed future, as [`Launcher`] returns. Not `Send`: the scenario awaits
/// it in place, and herald's start-up future cannot be proven `Send` behind
/// a trait object (a higher-ranked lifetime in sqlx's `Acquire`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Starts herald instances for the scenario: a process from the release
/// binary ([`SpawnHerald`], the command line), or an instance in the test's
/// own process (`bench/tests/smoke.rs`).
pub trait Launcher: Send + Sync {
    /// Starts a herald on `database_url` with these extra flags, and
    /// returns once it is ready.
    fn start(
        &self,
        database_url: String,
        flags: Vec<String>,
    ) -> BoxFuture<'_, anyhow::Result<Started>>;
}

/// A herald the scenario started.
pub struct Started {
    pub addr: SocketAddr,
    stop: BoxFuture<'static, anyhow::Result<()>>,
}

impl Started {
    /// `stop` is awaited to stop it (a future does nothing until then).
    pub fn new(addr: SocketAddr, stop: BoxFuture<'static, anyhow::Result<()>>) -> Self {
        Self { addr, stop }
    }

    /// Stops it and waits until it has.
    ///
    /// # Errors
    /// It did not stop cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.await
    }
}

/// herald from its release binary, as `run --spawn` starts it, on the
/// scenario's database.
pub struct SpawnHerald(pub Options);

impl Launcher for SpawnHerald {
    fn start(
        &self,
        database_url: String,
        flags: Vec<String>,
    ) -> BoxFuture<'_, anyhow::Result<Started>> {
        Box::pin(async move {
            let mut opts = self.0.clone();
            opts.herald_args
                .push(format!("--database-url={database_url}"));
            opts.herald_args.extend(flags);
            let spawned = servers::spawn(Kind::Herald, &opts).await?;
            let addr = spawned.addr;
            Ok(Started::new(addr, Box::pin(spawned.stop())))
        })
    }
}

/// Runs the scenario on a database of its own, created from `admin_url`
/// and dropped afterwards.
///
/// # Errors
/// The database or herald cannot be set up, or the prune never runs.
pub async fn run(
    launcher: &dyn Launcher,
    admin_url: &str,
    mut params: Params,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        params.prune > 0 && params.prune < params.fill,
        "--prune must be above 0 and below --fill"
    );
    params.batch = params.batch.max(1);
    params.publishers = params.publishers.max(1);
    let base = admin_url
        .rsplit_once('/')
        .context("--database-admin-url has no database path")?
        .0;
    static N: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "herald_bench_retention_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("cannot connect to {admin_url}"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut admin)
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    let _ = admin.close().await;
    let result = measure(launcher, &format!("{base}/{name}"), params).await;
    if let Err(e) = crate::postgres::drop_database(admin_url, &name).await {
        eprintln!("retention: {e:#}");
    }
    result
}

async fn measure(launcher: &dyn Launcher, url: &str, params: Params) -> anyhow::Result<Report> {
    let keep = || vec!["--retention=0".to_owned()];
    // The schema, from herald itself.
    launcher.start(url.to_owned(), keep()).await?.stop().await?;
    let mut db = PgConnection::connect(url).await?;
    fill(&mut db, &params).await?;
    let before = sizes(&mut db).await?;

    let serving = launcher.start(url.to_owned(), keep()).await?;
    let target = target::make(Kind::Herald, serving.addr);
    let windows = under_load(launcher, url, &target, &mut db, &params).await;
    serving.stop().await?;
    let (windows, pruner) = windows?;
    pruner.started.stop().await?;

    let after = sizes(&mut db).await?;
    let vacuum_started = Instant::now();
    sqlx::query("vacuum events").execute(&mut db).await?;
    let vacuum_s = vacuum_started.elapsed().as_secs_f64();
    let vacuumed = sizes(&mut db).await?;
    let (_, floor): (i64, i64) = sqlx::query_as("select last_id, pruned_through from log_head")
        .fetch_one(&mut db)
        .await?;

    let w = windows;
    let publish_p99_ratio = match (&w.baseline.latency, &w.prune.latency) {
        (Some(b), Some(p)) if b.p99_ms > 0.0 => Some(p.p99_ms / b.p99_ms),
        _ => None,
    };
    let stats = RetentionStats {
        fill: params.fill,
        pruned_through: floor,
        pruned_metric: pruner.pruned_metric,
        prune_s: w.prune_took.as_secs_f64(),
        baseline_s: w.baseline_length.as_secs_f64(),
        prune_window_s: w.prune_length.as_secs_f64(),
        baseline: w.baseline,
        publish_p99_ratio,
        replay_clients: REPLAY_CLIENTS,
        replays_baseline: w.replays_baseline.count,
        replays_prune: w.replays_prune.count,
        replay_resets_prune: w.replays_prune.resets,
        replay_errors: w.replays_baseline.errors + w.replays_prune.errors,
        replay_first_error: w
            .replays_baseline
            .first_error
            .or(w.replays_prune.first_error),
        replay_wait_baseline: Percentiles::of(&w.replays_baseline.waits),
        replay_wait_prune: Percentiles::of(&w.replays_prune.waits),
        before,
        after,
        vacuumed,
        vacuum_s,
    };
    Ok(Report {
        scenario: Scenario::Retention,
        target: Kind::Herald,
        params,
        elapsed_s: stats.prune_window_s,
        // The publishers during the prune; the baseline is in `retention`.
        publish: Some(w.prune),
        delivery: None,
        catch_up: None,
        idle: None,
        per_user: None,
        retention: Some(stats),
        churn: None,
        cluster: None,
        round: None,
        correctness: Correctness::default(),
        server: None,
        postgres: None,
        client: None,
    })
}

/// Fills the log with `params.fill` events, ids 1.. (dense, as herald
/// assigns them under its `log_head` lock), stamped over the hour before
/// now in id order (herald's commit times follow its ids).
async fn fill(db: &mut PgConnection, params: &Params) -> anyhow::Result<()> {
    let started = Instant::now();
    // A lost fill only means running again: no fsync per statement.
    sqlx::query("set synchronous_commit = off")
        .execute(&mut *db)
        .await?;
    let fill = i64::try_from(params.fill)?;
    let step = 3600.0 / params.fill as f64;
    let mut from = 1;
    while from <= fill {
        let to = fill.min(from + i64::try_from(FILL_CHUNK)? - 1);
        sqlx::query(
            "insert into events (id, topic, type, data, time) \
             select g, 'bench:retention:fill:' || (g % $3), 'bench', \
               ('{\"fill\":' || g || ',\"pad\":\"' || repeat('x', 24) || '\"}')::json, \
               now() - interval '1 hour' + make_interval(secs => g * $4) \
             from generate_series($1::bigint, $2::bigint) g",
        )
        .bind(from)
        .bind(to)
        .bind(i64::try_from(FILL_TOPICS)?)
        .bind(step)
        .execute(&mut *db)
        .await?;
        eprintln!(
            "retention: filled {to} of {fill} events ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        from = to + 1;
    }
    sqlx::query(
        "update log_head set last_id = $1, pruned_through = 0, \
           last_time = (select max(time) from events)",
    )
    .bind(fill)
    .execute(&mut *db)
    .await?;
    sqlx::query("vacuum (analyze) events")
        .execute(&mut *db)
        .await?;
    // The fill's dirty pages go to disk now, not during the baseline.
    sqlx::query("checkpoint").execute(&mut *db).await?;
    eprintln!(
        "retention: log filled and vacuumed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the publishers and the replay clients saw, before and during the
/// prune.
struct Windows {
    baseline: PublishStats,
    baseline_length: Duration,
    prune: PublishStats,
    /// From the pruning herald's launch to the floor reaching `--prune`.
    prune_length: Duration,
    /// From the floor's first move to it reaching `--prune`.
    prune_took: Duration,
    replays_baseline: ReplayStats,
    replays_prune: ReplayStats,
}

/// The herald that pruned, and what it said it pruned.
struct Pruner {
    started: Started,
    pruned_metric: Option<f64>,
}

async fn under_load(
    launcher: &dyn Launcher,
    url: &str,
    target: &Arc<dyn Target>,
    db: &mut PgConnection,
    params: &Params,
) -> anyhow::Result<(Windows, Pruner)> {
    let connections = params.publishers + REPLAY_CLIENTS + 2;
    net::ensure_fds(connections)?;
    let sources = Arc::new(Sources::new(
        target.addr(),
        params.source_addrs,
        connections,
    ));
    let topic: Arc<str> = target::topic("retention", u64::from(std::process::id())).into();
    let floor = Arc::new(AtomicI64::new(0));
    let phase = Arc::new(AtomicU8::new(WARMING));
    let replays = Replays::start(target, params, floor.clone(), phase.clone());

    let warmup = Publishers::start(target, &sources, params, &topic);
    tokio::time::sleep(params.settle).await;
    warmup.stop().await?;

    phase.store(BASELINE, Ordering::Relaxed);
    let baseline = Publishers::start(target, &sources, params, &topic);
    let baseline_started = Instant::now();
    tokio::time::sleep(params.duration.unwrap_or(Duration::from_secs(30))).await;
    let baseline_length = baseline_started.elapsed();
    let baseline = baseline.stop().await?;

    // `--prune` events due at once, counted from the head now: the first
    // round of the pruning herald (at its start) prunes at least them.
    let (last_id,): (i64,) = sqlx::query_as("select last_id from log_head")
        .fetch_one(&mut *db)
        .await?;
    let prune = i64::try_from(params.prune)?;
    let count = last_id - prune;
    phase.store(PRUNING, Ordering::Relaxed);
    let pruning = Publishers::start(target, &sources, params, &topic);
    let launched = Instant::now();
    eprintln!("retention: starting the pruning herald with --retention-count={count}");
    let started = launcher
        .start(
            url.to_owned(),
            vec![
                "--retention=0".to_owned(),
                format!("--retention-count={count}"),
            ],
        )
        .await;
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = pruning.stop().await;
            replays.stop().await;
            return Err(e);
        }
    };
    let watched = async {
        let moved = watch_floor(db, &floor, |f| f > 0).await?;
        let done = watch_floor(db, &floor, |f| f >= prune).await?;
        anyhow::Ok((moved, done))
    }
    .await;
    let prune_length = launched.elapsed();
    let pruning = pruning.stop().await?;
    phase.store(DONE, Ordering::Relaxed);
    let (replays_baseline, replays_prune) = replays.stop().await;
    let pruned_metric = pruned_metric(started.addr).await;
    let pruner = Pruner {
        started,
        pruned_metric,
    };
    let (moved, done) = match watched {
        Ok(w) => w,
        Err(e) => {
            let _ = pruner.started.stop().await;
            return Err(e);
        }
    };
    Ok((
        Windows {
            baseline,
            baseline_length,
            prune: pruning,
            prune_length,
            prune_took: done.duration_since(moved),
            replays_baseline,
            replays_prune,
        },
        pruner,
    ))
}

/// Polls `pruned_through` every 20 ms into `floor` until `until` holds;
/// returns when it first did.
async fn watch_floor(
    db: &mut PgConnection,
    floor: &AtomicI64,
    until: impl Fn(i64) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + PRUNE_TIMEOUT;
    loop {
        let f: i64 = sqlx::query_scalar("select pruned_through from log_head")
            .fetch_one(&mut *db)
            .await?;
        floor.store(f, Ordering::Relaxed);
        if until(f) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("the floor stayed at {f} for {PRUNE_TIMEOUT:?}; did herald prune?");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The harness's publishers at `params.rate`, on a runtime of their own,
/// until stopped.
struct Publishers {
    stop: CancellationToken,
    started: Instant,
    outcomes: tokio::sync::oneshot::Receiver<Vec<Option<publisher::Outcome>>>,
    publishers: usize,
}

impl Publishers {
    fn start(
        target: &Arc<dyn Target>,
        sources: &Arc<Sources>,
        params: &Params,
        topic: &Arc<str>,
    ) -> Self {
        let stop = CancellationToken::new();
        let started = Instant::now();
        let p = params.publishers.max(1);
        let interval = params
            .rate
            .map(|r| Duration::from_secs_f64(p as f64 * params.batch as f64 / r.max(0.001)));
        let plans: Vec<Plan> = (0..p)
            .map(|i| Plan {
                index: i as u32,
                topics: Topics::One(topic.clone()),
                filler: false,
                events: u64::MAX,
                interval,
                first_due: started
                    + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / p as f64)),
                batch: params.batch,
                payload_bytes: params.payload_bytes,
                until: started + Duration::from_secs(24 * 3600),
                stop: stop.clone(),
            })
            .collect();
        let (target, sources) = (target.clone(), sources.clone());
        let threads = params.publisher_threads.max(1);
        let (tx, outcomes) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
            else {
                return;
            };
            let out = rt.block_on(async move {
                let handles: Vec<_> = plans
                    .into_iter()
                    .map(|plan| tokio::spawn(publisher::run(target.clone(), sources.clone(), plan)))
                    .collect();
                let mut out = Vec::new();
                for h in handles {
                    out.push(h.await.ok());
                }
                out
            });
            let _ = tx.send(out);
        });
        Self {
            stop,
            started,
            outcomes,
            publishers: p,
        }
    }

    async fn stop(self) -> anyhow::Result<PublishStats> {
        self.stop.cancel();
        let outcomes = self
            .outcomes
            .await
            .context("the publishers' runtime failed")?;
        let secs = self.started.elapsed().as_secs_f64();
        let mut latency = stats::histogram();
        let mut s = PublishStats {
            publishers: self.publishers,
            requests: 0,
            events_acked: 0,
            errors: 0,
            first_error: None,
            events_per_sec: 0.0,
            latency: None,
        };
        for o in outcomes.into_iter().flatten() {
            latency.add(&o.latency).expect("same bounds");
            s.requests += o.requests;
            s.events_acked += o.acked_events;
            s.errors += o.errors;
            if s.first_error.is_none() {
                s.first_error = o.first_error;
            }
        }
        s.events_per_sec = s.events_acked as f64 / secs.max(1e-9);
        s.latency = Percentiles::of(&latency);
        Ok(s)
    }
}

const WARMING: u8 = 0;
const BASELINE: u8 = 1;
const PRUNING: u8 = 2;
const DONE: u8 = 3;

/// [`REPLAY_CLIENTS`] clients replaying one after another until stopped,
/// each replay recorded in the window it started in.
struct Replays {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<(ReplayStats, ReplayStats)>>,
}

struct ReplayStats {
    /// Request to first frame, and between frames, µs.
    waits: Histogram<u64>,
    count: u64,
    /// Replays that ended in a reset (the prune overtook them).
    resets: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ReplayStats {
    fn new() -> Self {
        Self {
            waits: stats::histogram(),
            count: 0,
            resets: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: Self) {
        self.waits.add(&other.waits).expect("same bounds");
        self.count += other.count;
        self.resets += other.resets;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

impl Replays {
    fn start(
        target: &Arc<dyn Target>,
        params: &Params,
        floor: Arc<AtomicI64>,
        phase: Arc<AtomicU8>,
    ) -> Self {
        let stop = CancellationToken::new();
        // Resume this far above the floor, at most half of what the prune
        // leaves, so that a replay never runs past the filled events.
        let ahead = REPLAY_AHEAD.min((params.fill - params.prune) / 2);
        let fill = params.fill;
        let tasks = (0..REPLAY_CLIENTS)
            .map(|i| {
                let (token, target) = (stop.clone(), target.clone());
                let (floor, phase) = (floor.clone(), phase.clone());
                let topic = format!("bench:retention:fill:{}", i as u64 % FILL_TOPICS);
                tokio::spawn(async move {
                    let mut baseline = ReplayStats::new();
                    let mut pruning = ReplayStats::new();
                    let mut every = tokio::time::interval(REPLAY_EVERY);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !token.is_cancelled() {
                        every.tick().await;
                        let into = match phase.load(Ordering::Relaxed) {
                            BASELINE => &mut baseline,
                            PRUNING => &mut pruning,
                            _ => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        };
                        let cursor =
                            u64::try_from(floor.load(Ordering::Relaxed)).unwrap_or(0) + ahead;
                        // Half of what this topic holds above the cursor.
                        let events =
                            REPLAY_EVENTS.min(fill.saturating_sub(cursor) / FILL_TOPICS / 2);
                        if events == 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        match replay(&*target, &topic, cursor, events, &mut into.waits).await {
                            Ok(reset) => {
                                into.count += 1;
                                into.resets += u64::from(reset);
                            }
                            Err(e) => {
                                into.errors += 1;
                                into.first_error.get_or_insert_with(|| format!("{e:#}"));
                            }
                        }
                    }
                    (baseline, pruning)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) -> (ReplayStats, ReplayStats) {
        self.stop.cancel();
        let (mut baseline, mut pruning) = (ReplayStats::new(), ReplayStats::new());
        for task in self.tasks {
            if let Ok((b, p)) = task.await {
                baseline.merge(b);
                pruning.merge(p);
            }
        }
        (baseline, pruning)
    }
}

/// One replay of `events` events of `topic` after `cursor`: records each
/// wait (request to first frame, then between reads that brought frames)
/// in µs; returns whether it ended in a reset.
async fn replay(
    target: &dyn Target,
    topic: &str,
    cursor: u64,
    events: u64,
    waits: &mut Histogram<u64>,
) -> anyhow::Result<bool> {
    let mut stream = net::connect(target.addr(), None).await?;
    let request = target.subscribe_request(topic, Some(cursor.to_string().as_bytes()));
    let mut last = Instant::now();
    stream.write_all(&request).await?;
    let mut raw = Vec::with_capacity(16 * 1024);
    let (head, len) = http::read_head(&mut stream, &mut raw).await?;
    if head.status != 200 {
        bail!("the stream answered {}", head.status);
    }
    let mut decoder = BodyDecoder::new(head.framing);
    let mut parser = sse::Parser::with_capacity(16 * 1024);
    let mut rest = raw.split_off(len);
    let (mut read, mut reset) = (0, false);
    let deadline = Instant::now() + REPLAY_TIMEOUT;
    loop {
        decoder.decode(&rest, parser.buffer())?;
        let before = (read, reset);
        parser.frames(|f| {
            if f.event == Some(&b"reset"[..]) {
                reset = true;
            } else if f.data.is_some() {
                read += 1;
            }
        });
        if (read, reset) != before {
            let now = Instant::now();
            stats::record(waits, micros(now.duration_since(last)));
            last = now;
        }
        if reset || read >= events || decoder.is_done() {
            return Ok(reset);
        }
        if Instant::now() > deadline {
            bail!("a replay of {events} events took over {REPLAY_TIMEOUT:?}");
        }
        rest.clear();
        let n = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            tokio::io::AsyncReadExt::read_buf(&mut stream, &mut rest),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!("a replay of {events} events took over {REPLAY_TIMEOUT:?}")
        })??;
        if n == 0 {
            return Ok(reset);
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `herald_retention_pruned_events_total` from a herald's `/metrics`.
async fn pruned_metric(addr: SocketAddr) -> Option<f64> {
    let mut conn = Conn::open(addr, None).await.ok()?;
    let res = conn
        .roundtrip(&http::get("/metrics", &addr.to_string(), &[]))
        .await
        .ok()?;
    let text = String::from_utf8(res.body).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("herald_retention_pruned_events_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// Sizes of `events` and what PostgreSQL counts in it.
async fn sizes(db: &mut PgConnection) -> anyhow::Result<TableSizes> {
    // The statistics counters lag by up to a second; read them fresh.
    sqlx::query("select pg_stat_clear_snapshot()")
        .execute(&mut *db)
        .await?;
    let (total, table, indexes, live, dead): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "select pg_total_relation_size('events'), pg_relation_size('events'), \
           pg_indexes_size('events'), n_live_tup, n_dead_tup \
         from pg_stat_user_tables where relname = 'events'",
    )
    .fetch_one(&mut *db)
    .await?;
    Ok(TableSizes {
        total_bytes: total,
        table_bytes: table,
        index_bytes: indexes,
        live_rows: live,
        dead_rows: dead,
    })
}
