//! Putting the pieces together: connect, warm the ring, bind (port 0 in
//! tests), start the committer, listener and retention task, serve, and
//! stop cleanly.
//!
//! Stopping: `/readyz` fails at once; open streams end spread over the drain
//! window (each in its own slot, so clients do not all reconnect in the same
//! second) while new streams are answered with `retry:` and an end; once the
//! last stream is gone (or the window is over) the server stops accepting,
//! lets publishes in flight finish, and returns. An SSE body never ends by
//! itself, so without the shutdown token the server would wait on open
//! streams forever; the whole stop is bounded by the drain window plus twice
//! [`STOP_GRACE`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Access, Auth, Limits};
use crate::config::Config;
use crate::cors::Cors;
use crate::http::{self, AppState, PublishLimits, Shared};
use crate::hub::Hub;
use crate::log::{Election, EventLog, Kept, Policy, advertised_url};
use crate::registry::{Registry, RegistrySettings};
use crate::retention::Retention;
use crate::stream::{StreamSettings, Streams};
use crate::tail::{self, ListenerStatus, LogTail};
use crate::{db, server, telemetry};

/// Extra time after the drain window for publishes and writes in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A herald instance, bound and ready to serve.
pub struct Instance {
    tcp: TcpListener,
    state: AppState,
    /// Client connections served in full at once (`--max-connections`).
    max_connections: usize,
    drain: Duration,
    cors: Vec<String>,
    instance: Option<String>,
    tasks: Vec<JoinHandle<()>>,
    /// The registry's writer, control tail and lease: stopped after the
    /// streams, so the writer records their ends before the instance goes.
    registry_tasks: Vec<JoinHandle<()>>,
    tasks_stop: CancellationToken,
}

impl Instance {
    /// Connects to PostgreSQL (creating the database and applying migrations
    /// if needed), warms the ring and binds the listen address.
    ///
    /// # Errors
    /// One line naming what failed: the database, or the address.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let auth = Arc::new(Auth::new(&config.auth).context("cannot configure tokens")?);
        refuse_open_anonymous(&config, &auth)?;
        let limits = Arc::new(Limits::new(&config.limits));
        // Before anything opens a file: the pool, the listener, clients.
        let file_limit = server::raise_file_limit();
        let max_connections =
            server::max_connections(config.max_connections, file_limit, config.db_pool);
        let metrics = telemetry::metrics_handle();
        let pool = db::connect(
            &config.database_url,
            config.instance_name.as_deref(),
            config.db_pool,
            config.db_timeout,
        )
        .await?;
        let (election, cluster) = Election::new(pool.connect_options().as_ref().clone());
        let (log, committer) = EventLog::start(pool.clone(), config.db_timeout, cluster.clone());
        let hub = Hub::new(config.ring_size, 0);
        tail::warm(&log, &hub, config.ring_size)
            .await
            .context("cannot read the event log")?;
        let tcp =
            bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
        let advertised = advertised_url(
            config.advertise_url.as_deref(),
            tcp.local_addr()
                .context("the listening socket has no address")?,
            &pool,
        )
        .await;

        let shutdown = CancellationToken::new();
        // The listener outlives `shutdown`: streams in their drain slot still
        // get live events until the server has finished.
        let tasks_stop = CancellationToken::new();
        let (registry, registry_tasks) = Registry::start(
            pool,
            config.instance_name.clone(),
            auth.revoked.clone(),
            RegistrySettings {
                max_streams_per_subject: config.limits.max_streams_per_subject,
                max_streams_per_ip: config.limits.max_streams_per_ip,
                lease: config.lease,
                retention: config.retention,
                revocation_window: config.revocation_window,
                poll_interval: config.poll_interval,
            },
            tasks_stop.clone(),
        )
        .await
        .context("cannot start the stream registry")?;
        let status = Arc::new(ListenerStatus::default());
        let tail = LogTail {
            log: log.clone(),
            hub: hub.clone(),
            status: status.clone(),
            poll_interval: config.poll_interval,
            probe_after: config.listener_probe,
            kept: Kept::for_reads(),
        };
        let retention = Retention {
            log: log.clone(),
            hub: hub.clone(),
            policy: Policy::new(
                config.retention,
                config.retention_count,
                config.idempotency_window,
            ),
        };
        let election = election.of(registry.instance().to_owned(), advertised);
        let tasks = vec![
            committer,
            // Given up as the drain begins: another instance commits for
            // the cluster from its next try, while this one still serves
            // what it was sent (README, "Running several instances").
            tokio::spawn(election.run(shutdown.clone())),
            tokio::spawn(tail.run(tasks_stop.clone())),
            tokio::spawn(retention.run(tasks_stop.clone())),
            telemetry::spawn_upkeep(metrics.clone()),
            tokio::spawn(limits_upkeep(limits.clone())),
        ];
        let access = Access {
            auth,
            limits,
            cors: Cors::new(&config.cors_origins),
        };
        let state = AppState::new(Shared {
            streams: Streams {
                hub,
                log: log.clone(),
                settings: Arc::new(StreamSettings {
                    heartbeat: config.heartbeat,
                    retry: config.retry,
                    drain: config.drain,
                    queue_capacity: config.subscriber_queue,
                    write_timeout: config.write_timeout,
                    expiry_warning: access.auth.expiry_warning,
                }),
                shutdown,
                open: TaskTracker::new(),
                access: access.clone(),
                registry,
            },
            access,
            log,
            publish_limits: PublishLimits {
                max_data_bytes: config.max_data_bytes,
                max_body_bytes: config.max_body_bytes,
                max_batch: config.max_batch,
                body_timeout: config.body_timeout,
            },
            listener: status,
            metrics,
            max_topics_per_stream: config.max_topics_per_stream,
            cluster,
        });
        Ok(Self {
            tcp,
            state,
            max_connections,
            drain: config.drain,
            cors: config.cors_origins,
            instance: config.instance_name,
            tasks,
            registry_tasks,
            tasks_stop,
        })
    }

    /// The bound address (the real port when asked for port 0).
    ///
    /// # Panics
    /// If the socket has no local address, which a bound socket always has.
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// Serves until `stop` resolves, then stops as described above.
    ///
    /// # Errors
    /// If the server fails while serving.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            tcp,
            state,
            max_connections,
            drain,
            cors,
            instance,
            tasks,
            registry_tasks,
            tasks_stop,
        } = self;
        let shutdown = state.streams.shutdown.clone();
        let pool = state.log.pool().clone();
        // The CORS origins too: a browser whose origin is not listed gives up
        // for good, so a typo there should be easy to spot.
        tracing::info!(address = %tcp.local_addr()?, instance = instance.as_deref().unwrap_or("herald"), cors_origins = ?cors, max_connections, "herald is serving");

        // Connections are still accepted during the drain window: a load
        // balancer sees `/readyz` fail, and a stream that arrives is told to
        // come back (`retry:`, then the end) instead of being refused.
        let stop_accepting = CancellationToken::new();
        let streams = state.streams.open.clone();
        let edge = http::service(state.clone(), server::MAX_HEAD);
        let serve = server::serve(
            tcp,
            state.streams.clone(),
            edge,
            stop_accepting.clone(),
            max_connections,
        );
        let mut server = tokio::spawn(async move {
            serve.await;
            Ok::<(), std::io::Error>(())
        });

        tokio::select! {
            result = &mut server => {
                shutdown.cancel();
                tasks_stop.cancel();
                for task in registry_tasks {
                    task.abort();
                }
                return result.context("server task failed")?.context("server failed");
            }
            () = stop => {}
        }
        tracing::info!(drain = ?drain, "stopping: ending open streams over the drain window");
        shutdown.cancel();
        streams.close();
        // Every stream ends in its slot of the window; stop waiting as soon as
        // none is left.
        let _ = tokio::time::timeout(drain + STOP_GRACE, streams.wait()).await;
        stop_accepting.cancel();
        match tokio::time::timeout(STOP_GRACE, &mut server).await {
            Ok(result) => result
                .context("server task failed")?
                .context("server failed")?,
            Err(_) => {
                tracing::warn!("connections still open after the drain window; closing them");
                server.abort();
            }
        }
        tasks_stop.cancel();
        // The registry's writer records what is queued (the drained
        // streams' ends) before it stops.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            for task in registry_tasks {
                let _ = task.await;
            }
        })
        .await;
        for task in &tasks {
            task.abort();
        }
        // The committer and the listener keep a connection each
        // (`log/kept.rs`): the pool closes once their tasks have ended and
        // dropped them.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            for task in tasks {
                let _ = task.await;
            }
            pool.close().await;
        })
        .await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Connections the kernel queues before they are accepted. tokio's default
/// (1,024) overflows when thousands of clients reconnect at once after a
/// deploy, and each overflowed client waits a SYN retry (1 s, then 3 s).
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Safe by default: without tokens herald serves anyone who can reach it,
/// so it does so only on a loopback address unless told to on purpose.
fn refuse_open_anonymous(config: &Config, auth: &Auth) -> anyhow::Result<()> {
    if auth.is_anonymous() && !config.listen.ip().is_loopback() && !config.auth.allow_anonymous {
        anyhow::bail!(
            "refusing to serve without tokens on {}: anyone who reaches it could read every \
             topic and publish anywhere; configure tokens (--jwt-secret-file, or \
             --jwt-public-key-file with --jwt-algorithm) or pass --allow-anonymous to do so \
             on purpose",
            config.listen
        );
    }
    Ok(())
}

/// Forgets idle subjects' rate-limit state now and then.
async fn limits_upkeep(limits: Arc<Limits>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        limits.upkeep();
    }
}

/// Builds and serves until SIGINT or SIGTERM, then flushes the spans
/// queued for export, if export is on.
///
/// # Errors
/// As [`Instance::build`] and [`Instance::run_until`].
pub async fn run(config: Config) -> anyhow::Result<()> {
    let result = async {
        Instance::build(config)
            .await?
            .run_until(crate::signal::stop())
            .await
    }
    .await;
    // Spans still queued for export go out before the process ends.
    telemetry::otel::shutdown().await;
    result
}
