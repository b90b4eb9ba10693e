//! One committer for the cluster (issue 26).
//!
//! Every append locks the single `log_head` row, so appends from several
//! instances take turns, and each instance's committer used to send its
//! own group as soon as it had one: with two instances, two groups were
//! in PostgreSQL at once, one committing and one waiting for the lock, and
//! each was half the size one instance's would be. Twice the commits for
//! the same events, each with its fixed cost (a round trip, a WAL flush, a
//! notification to every listener): two instances accepted 0.73x what one
//! did (`BENCHMARKS.md`, "Several instances publishing").
//!
//! So the instances elect one of them to commit for all: the one that holds
//! the session-level advisory lock [`COMMITTER_LOCK`] on a connection of
//! its own. It records in `log_committer` where the others reach it (its
//! `--advertise-url`) and a secret made by PostgreSQL for this election;
//! the others read that row and send their groups there (`forward.rs`),
//! where they join the committer's own groups, one statement for the whole
//! cluster as with one instance.
//!
//! **Nothing about correctness depends on the election.** Whoever sends an
//! append locks `log_head` as before, so ids are dense and in commit order
//! however many instances commit at once. An instance commits its groups
//! itself whenever it has no committer to send them to: before the first
//! election, while the database cannot be reached, when the committer's
//! address does not answer (for a second, then it tries again), and during
//! the second or so after a committer dies and before another takes the
//! lock. Two committers for a moment cost groups, never events.
//!
//! What a committer's death costs: the publish requests it held from other
//! instances (sent, not answered) get `503`, "outcome unknown", as a
//! request whose commit was sent and not answered always has (an
//! `Idempotency-Key` makes the retry safe); the others' next groups are
//! committed where they are until a survivor holds the lock (within
//! [`ELECTION_INTERVAL`]) and then go to it. Its own publishers lose their
//! connections, as with any instance that dies.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// Key of the session-level advisory lock held by the cluster's committer
/// ("heraldcm").
pub const COMMITTER_LOCK: i64 = 0x6865_7261_6c64_636d;

/// How often an instance that does not commit tries to, and reads where
/// the committer is; and how often the committer checks its lock's
/// connection is alive.
pub const ELECTION_INTERVAL: Duration = Duration::from_secs(1);

/// The path the committer takes other instances' groups on.
pub const APPEND_PATH: &str = "/v1/cluster/append";

/// Where this instance's groups go.
#[derive(Clone, Debug, Default)]
pub enum Role {
    /// No committer known (before the first election, or the database is
    /// out of reach): this instance commits its own groups.
    #[default]
    Unsettled,
    /// This instance commits for the cluster, and takes the groups that
    /// show `secret`.
    Committer { secret: Arc<str> },
    /// Another instance commits for the cluster.
    Follower(Arc<Peer>),
}

/// The cluster's committer, as another instance sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its instance id.
    pub instance: String,
    /// Where its groups are sent: its advertised URL and [`APPEND_PATH`].
    pub append_url: String,
    /// `Bearer <secret>`.
    pub authorization: String,
}

impl Peer {
    fn new(instance: String, url: &str, secret: &str) -> Self {
        Self {
            instance,
            append_url: format!("{}{APPEND_PATH}", url.trim_end_matches('/')),
            authorization: format!("Bearer {secret}"),
        }
    }
}

/// This instance's view of the election; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    role: watch::Receiver<Role>,
}

impl Cluster {
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Whether a group sent with `authorization` (`Bearer <secret>`) comes
    /// from an instance that read this instance's election: only the
    /// committer has a secret, and only its own.
    pub fn accepts(&self, authorization: &[u8]) -> bool {
        let Role::Committer { secret } = &*self.role.borrow() else {
            return false;
        };
        let Some(given) = authorization.strip_prefix(b"Bearer ") else {
            return false;
        };
        constant_time_eq(given, secret.as_bytes())
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The base URL the others reach this instance at: `configured`
/// (`--advertise-url`); else `http://` and the bound address when it is a
/// specific one; else the address PostgreSQL sees this instance's
/// connections come from (an address on the network the instances share
/// with their database), with the bound port; else loopback.
pub async fn advertised_url(
    configured: Option<&str>,
    bound: std::net::SocketAddr,
    pool: &sqlx::PgPool,
) -> String {
    if let Some(url) = configured {
        return url.to_owned();
    }
    let ip = if bound.ip().is_unspecified() {
        let seen: Option<String> = sqlx::query_scalar("select host(inet_client_addr())")
            .fetch_one(pool)
            .await
            .ok()
            .flatten();
        seen.and_then(|s| s.parse().ok())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
    } else {
        bound.ip()
    };
    format!("http://{}", std::net::SocketAddr::new(ip, bound.port()))
}

/// The election loop of one instance (see the module's documentation).
pub struct Election {
    /// A connection of its own, not the pool's: the lock lives as long as
    /// its session.
    options: PgConnectOptions,
    /// This run's instance id.
    instance: String,
    /// The base URL the other instances reach this one at.
    url: String,
    role: watch::Sender<Role>,
}

impl Election {
    /// The election of this instance, not started, and the view of it its
    /// committer and its HTTP side read.
    pub fn new(options: PgConnectOptions) -> (Self, Cluster) {
        let (role, view) = watch::channel(Role::Unsettled);
        let election = Self {
            options,
            instance: String::new(),
            url: String::new(),
            role,
        };
        (election, Cluster { role: view })
    }

    /// Who this instance is (its registry id) and where the others reach it.
    #[must_use]
    pub fn of(mut self, instance: String, url: String) -> Self {
        self.instance = instance;
        self.url = url;
        self
    }

    /// Runs until `stop`, then gives the lock up (by closing its
    /// connection) so that another instance takes over at its next try.
    pub async fn run(self, stop: CancellationToken) {
        telemetry::append_committer().set(0.0);
        let mut conn: Option<PgConnection> = None;
        loop {
            let role = match self.round(&mut conn).await {
                Ok(role) => role,
                Err(e) => {
                    if let Some(c) = conn.take() {
                        let _ = c.close_hard().await;
                    }
                    tracing::debug!(error = %e, "committer election: no database; committing here");
                    Role::Unsettled
                }
            };
            self.set(role);
            tokio::select! {
                () = tokio::time::sleep(ELECTION_INTERVAL) => {}
                () = stop.cancelled() => break,
            }
        }
        self.set(Role::Unsettled);
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    }

    /// One try: the lock kept (the connection still answers), taken, or
    /// held by another instance, whose row says where it is.
    async fn round(&self, conn: &mut Option<PgConnection>) -> Result<Role, sqlx::Error> {
        if conn.is_none() {
            *conn = Some(self.options.connect().await?);
        }
        let c = conn.as_mut().expect("connected above");
        let current = self.role.borrow().clone();
        if let Role::Committer { .. } = current {
            // The lock is this session's for as long as it answers.
            c.ping().await?;
            return Ok(current);
        }
        let won: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(COMMITTER_LOCK)
            .fetch_one(&mut *c)
            .await?;
        if won {
            let secret: String = sqlx::query_scalar(
                "insert into log_committer (instance, url, secret) \
                 values ($1, $2, gen_random_uuid()::text || gen_random_uuid()::text) \
                 on conflict (singleton) do update \
                   set instance = excluded.instance, url = excluded.url, \
                       secret = excluded.secret, since = now() \
                 returning secret",
            )
            .bind(&self.instance)
            .bind(&self.url)
            .fetch_one(&mut *c)
            .await?;
            return Ok(Role::Committer {
                secret: secret.into(),
            });
        }
        let row: Option<(String, String, String)> =
            sqlx::query_as("select instance, url, secret from log_committer")
                .fetch_optional(&mut *c)
                .await?;
        Ok(match row {
            Some((instance, url, secret)) if instance != self.instance => {
                Role::Follower(Arc::new(Peer::new(instance, &url, &secret)))
            }
            // Our own row, from before our connection was lost: the lock
            // is another's now, and it has not written yet.
            _ => Role::Unsettled,
        })
    }

    /// Publishes `role` if it changed, and says so.
    fn set(&self, role: Role) {
        self.role.send_if_modified(|current| {
            let same = match (&*current, &role) {
                (Role::Unsettled, Role::Unsettled) => true,
                (Role::Committer { secret: a }, Role::Committer { secret: b }) => a == b,
                (Role::Follower(a), Role::Follower(b)) => a == b,
                _ => false,
            };
            if same {
                return false;
            }
            match &role {
                Role::Committer { .. } => {
                    tracing::info!(url = %self.url, "this instance commits the cluster's appends");
                }
                Role::Follower(peer) => {
                    tracing::info!(committer = %peer.instance, url = %peer.append_url, "appends go to the cluster's committer");
                }
                Role::Unsettled => {
                    tracing::info!("no committer for the cluster known; this instance commits its own appends");
                }
            }
            telemetry::append_committer().set(if matches!(role, Role::Committer { .. }) {
                1.0
            } else {
                0.0
            });
            *current = role;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_committer_takes_groups_and_only_with_its_secret() {
        let (tx, rx) = watch::channel(Role::Unsettled);
        let cluster = Cluster { role: rx };
        assert!(!cluster.accepts(b"Bearer s3cret"));
        tx.send_replace(Role::Committer {
            secret: "s3cret".into(),
        });
        assert!(cluster.accepts(b"Bearer s3cret"));
        assert!(!cluster.accepts(b"Bearer s3cre"));
        assert!(!cluster.accepts(b"Bearer s3cret2"));
        assert!(!cluster.accepts(b"s3cret"));
        assert!(!cluster.accepts(b"Basic s3cret"));
        tx.send_replace(Role::Follower(Arc::new(Peer::new(
            "other".into(),
            "http://h:1",
            "s3cret",
        ))));
        assert!(!cluster.accepts(b"Bearer s3cret"));
    }

    #[test]
    fn a_peer_is_reached_at_its_url_and_the_append_path() {
        let peer = Peer::new("i".into(), "http://10.0.0.5:8080/", "x");
        assert_eq!(peer.append_url, "http://10.0.0.5:8080/v1/cluster/append");
        assert_eq!(peer.authorization, "Bearer x");
    }
}
