//! The stream registry: every stream of every instance, in PostgreSQL
//! (docs/ARCHITECTURE.md, "Streams you can name and steer").
//!
//! - Off the delivery path. A stream delivers before its record commits:
//!   [`Registry::enroll`] only queues the record, and one writer per
//!   instance writes what is queued in batches (`writer.rs`), as the
//!   committer groups publishes. After each batch the writer holds the caps
//!   across instances: the oldest streams of a subject (or an address) over
//!   its cap are ended.
//! - Control travels through the database: a row in `herald_control` and a
//!   NOTIFY, read by every instance as the log tail reads events
//!   (`control.rs`). The instance that holds the stream acts on it; nothing
//!   passes between instances by any other way.
//! - Each instance renews a lease (`lease.rs`). Streams of an instance whose
//!   lease passed are listed as ended, `instance_lost`.
//!
//! In memory each instance keeps only its own open streams (their
//! mailboxes, by handle and subject), and the revoked subjects
//! (`auth::Revoked`).

mod audit;
mod control;
mod lease;
mod list;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::auth::Revoked;
use crate::event::{Filters, topic_list};
use crate::log::LogError;
use crate::stream::{ChangeFailed, Command, Control, Ending};
use crate::telemetry;

pub use audit::AuditError;
pub use list::{ListQuery, MAX_LISTED, StreamState};

/// The NOTIFY channel of control commands.
pub const CONTROL_CHANNEL: &str = "herald_control";
/// The advisory lock every writer of `herald_control` takes, so that its ids
/// commit in order and a reader after an id passes over none.
const CONTROL_LOCK: i64 = 0x6865_7261_6c64_6374;
/// How long a `PUT` waits for the instance that holds the stream.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a `PUT` of a handle the registry has no record of waits for a
/// holder to answer: long enough for a record still in a batch.
const UNRECORDED_TIMEOUT: Duration = Duration::from_secs(1);

/// What the registry needs from the configuration.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub max_streams_per_subject: usize,
    pub max_streams_per_ip: usize,
    pub lease: Duration,
    pub retention: Duration,
    pub revocation_window: Duration,
    /// How often control rows are read without a notification.
    pub poll_interval: Duration,
}

/// Handle to the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// This run of this instance: its lease row, and the prefix of its
    /// streams' ids.
    instance: String,
    name: Option<String>,
    next: AtomicU64,
    writer: mpsc::UnboundedSender<writer::Op>,
    local: Mutex<Local>,
    /// `PUT`s sent to another instance, waiting for its answer, by the id
    /// of their control row.
    waiting: Mutex<HashMap<i64, oneshot::Sender<Ack>>>,
    revoked: Revoked,
    settings: RegistrySettings,
}

/// This instance's open streams.
#[derive(Default)]
struct Local {
    streams: HashMap<u64, Arc<LocalStream>>,
    handles: HashMap<Box<str>, u64>,
}

/// One open stream of this instance, as the registry reaches it: one
/// allocation per stream, shared with the stream (its mailbox).
struct LocalStream {
    key: u64,
    handle: Option<Box<str>>,
    subject: Option<Box<str>>,
    control: Control,
}

/// A holder's answer to a topic change sent through the database.
#[derive(Debug, Clone, Copy)]
enum Ack {
    Applied(i64),
    NotFound,
    /// The stream ended before it took the change.
    Gone,
    Failed,
}

/// What a stream's record starts with. Kept small: it waits in the
/// writer's queue, and a burst of opens queues thousands.
pub struct Opening {
    pub handle: Option<Box<str>>,
    pub subject: Option<Box<str>>,
    pub client_addr: std::net::IpAddr,
    pub user_agent: Option<Box<str>>,
    pub filters: Filters,
    pub start_cursor: i64,
    pub resumed: bool,
}

/// A stream's place in the registry, for its life. Its end is recorded
/// with [`Enrolment::end`]; dropping it forgets the stream locally.
pub struct Enrolment {
    registry: Registry,
    local: Arc<LocalStream>,
}

/// A named stream as the registry holds it.
#[derive(Debug, Clone)]
pub struct Handle {
    pub subject: Option<String>,
    pub topics: Filters,
    /// `Some(reason)` once ended for good (`replaced`, `revoked`, `ended`).
    pub ended: Option<String>,
    /// Its topics over time from the cursor asked: `(effective_at,
    /// filters)`, oldest first; each applies to ids above its
    /// `effective_at` (the first also to those below).
    pub history: Vec<(i64, Filters)>,
}

/// Why a topic change was refused.
#[derive(Debug)]
pub enum ChangeError {
    /// No stream of this subject has that handle.
    Unknown,
    /// The stream was ended for good (`replaced`, `revoked`, `ended`).
    Ended(String),
    /// No instance holds the stream now.
    NotConnected,
    Unavailable(String),
}

impl Registry {
    /// Starts the registry's tasks (writer, control tail, lease), which
    /// run until `stop`; the writer writes what is queued before it ends.
    pub async fn start(
        pool: PgPool,
        name: Option<String>,
        revoked: Revoked,
        settings: RegistrySettings,
        stop: CancellationToken,
    ) -> Result<(Self, Vec<tokio::task::JoinHandle<()>>), LogError> {
        // The id the exported spans name, if export took one.
        let instance = crate::telemetry::otel::claim_instance_id().unwrap_or_else(new_instance_id);
        let (tx, rx) = mpsc::unbounded_channel();
        let registry = Self {
            inner: Arc::new(Inner {
                pool,
                instance,
                name,
                next: AtomicU64::new(1),
                writer: tx,
                local: Mutex::default(),
                waiting: Mutex::default(),
                revoked,
                settings,
            }),
        };
        // Exported from the start, before the first batch or revocation.
        metrics::gauge!(telemetry::REGISTRY_LAG).set(0.0);
        metrics::gauge!(telemetry::REVOCATIONS_ACTIVE).set(0.0);
        lease::renew(&registry).await?;
        control::load_revocations(&registry).await?;
        let cursor = control::head(&registry).await?;
        let tasks = vec![
            tokio::spawn(writer::run(registry.clone(), rx, stop.clone())),
            tokio::spawn(control::run(registry.clone(), cursor, stop.clone())),
            tokio::spawn(lease::run(registry.clone(), stop)),
        ];
        Ok((registry, tasks))
    }

    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.inner.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of this instance's stream `key`.
    fn stream_id(&self, key: u64) -> String {
        format!("{}.{key}", self.inner.instance)
    }

    /// Registers a stream that is about to deliver: its mailbox at once,
    /// its record in the next batch.
    pub fn enroll(&self, opening: Opening) -> Enrolment {
        let key = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(LocalStream {
            key,
            handle: opening.handle.clone(),
            subject: opening.subject.clone(),
            control: Control::default(),
        });
        {
            let mut local = self.local();
            if let Some(handle) = &opening.handle
                && let Some(older) = local.handles.insert(handle.clone(), key)
                && let Some(older) = local.streams.get(&older)
            {
                // The same named stream connected again before this
                // instance saw its older connection go.
                older.control.send(Command::End(Ending::Superseded));
            }
            local.streams.insert(key, stream.clone());
        }
        tracing::info!(
            stream = %self.stream_id(key),
            handle = opening.handle.as_deref().unwrap_or(""),
            subject = opening.subject.as_deref().unwrap_or(""),
            instance = %self.inner.instance,
            client = %opening.client_addr,
            topics = ?topic_list(&opening.filters),
            start = opening.start_cursor,
            "stream opened"
        );
        let _ = self.inner.writer.send(writer::Op::open(key, opening));
        Enrolment {
            registry: self.clone(),
            local: stream,
        }
    }

    /// A named stream's record: its subject, topics, whether it ended for
    /// good, and its topics since `cursor`.
    ///
    /// # Errors
    /// [`LogError`] when PostgreSQL cannot answer.
    pub async fn handle(&self, handle: &str, cursor: i64) -> Result<Option<Handle>, LogError> {
        let row: Option<(Option<String>, Vec<String>, Option<String>)> = sqlx::query_as(
            "SELECT subject, topics, end_reason FROM herald_handles WHERE handle = $1",
        )
        .bind(handle)
        .fetch_optional(self.pool())
        .await?;
        let Some((subject, topics, ended)) = row else {
            return Ok(None);
        };
        let changes: Vec<(i64, Vec<String>)> = sqlx::query_as(
            "SELECT effective_at, topics FROM herald_topic_changes WHERE handle = $1 \
             AND effective_at >= coalesce((SELECT max(effective_at) FROM herald_topic_changes \
             WHERE handle = $1 AND effective_at <= $2), 0) ORDER BY effective_at",
        )
        .bind(handle)
        .bind(cursor)
        .fetch_all(self.pool())
        .await?;
        let topics = parse_topics(&topics);
        let mut history: Vec<(i64, Filters)> = changes
            .iter()
            .map(|(at, t)| (*at, parse_topics(t)))
            .collect();
        if history.is_empty() {
            history.push((cursor, topics.clone()));
        }
        Ok(Some(Handle {
            subject,
            topics,
            ended,
            history,
        }))
    }

    /// Replaces a named stream's topics, through the instance that holds
    /// it; the answer is the log id they apply after.
    ///
    /// # Errors
    /// [`ChangeError`] saying why not.
    pub async fn change_topics(
        &self,
        handle: &str,
        subject: Option<&str>,
        filters: Filters,
    ) -> Result<i64, ChangeError> {
        let here = {
            let local = self.local();
            local
                .handles
                .get(handle)
                .and_then(|key| local.streams.get(key))
                .cloned()
        };
        if let Some(stream) = here {
            if stream.subject.as_deref() != subject {
                return Err(ChangeError::Unknown);
            }
            let (reply, answer) = oneshot::channel();
            stream.control.send(Command::Topics {
                filters,
                reply_to: None,
                reply,
            });
            return match tokio::time::timeout(CHANGE_TIMEOUT, answer).await {
                Ok(Ok(Ok(at))) => Ok(at),
                Ok(Ok(Err(ChangeFailed::Unrecorded))) => Err(ChangeError::Unavailable(
                    "the change could not be recorded".into(),
                )),
                _ => Err(ChangeError::NotConnected),
            };
        }
        // Another instance holds it, if any does.
        let known: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT subject, end_reason FROM herald_handles WHERE handle = $1")
                .bind(handle)
                .fetch_optional(self.pool())
                .await
                .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        // A handle not recorded yet may be a stream that opened a moment
        // ago (records are written in batches): its holder may still
        // answer, within a shorter wait.
        let recorded = match known {
            None => false,
            Some((owner, _)) if owner.as_deref() != subject => return Err(ChangeError::Unknown),
            Some((_, Some(reason))) => return Err(ChangeError::Ended(reason)),
            Some(_) => true,
        };
        let wait = if recorded {
            CHANGE_TIMEOUT
        } else {
            UNRECORDED_TIMEOUT
        };
        let topics: Vec<String> = topic_list(&filters)
            .into_iter()
            .map(|t| t.into_owned())
            .collect();
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        let id = control::insert(
            &mut tx,
            control::Row {
                kind: "topics",
                target: Some(handle),
                subject,
                topics: Some(&topics),
                ..control::Row::default()
            },
        )
        .await
        .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        let (tx_ack, ack) = oneshot::channel();
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx_ack);
        let committed = tx.commit().await;
        let answer = match committed {
            Ok(()) => tokio::time::timeout(wait, ack).await,
            Err(e) => {
                self.forget_waiter(id);
                return Err(ChangeError::Unavailable(e.to_string()));
            }
        };
        self.forget_waiter(id);
        match answer {
            Ok(Ok(Ack::Applied(at))) => Ok(at),
            Ok(Ok(Ack::NotFound)) => Err(ChangeError::Unknown),
            Ok(Ok(Ack::Gone)) => Err(ChangeError::NotConnected),
            Ok(Ok(Ack::Failed)) => Err(ChangeError::Unavailable(
                "the change could not be recorded".into(),
            )),
            // No holder answered for a handle without a record: none such.
            _ if !recorded => Err(ChangeError::Unknown),
            _ => Err(ChangeError::NotConnected),
        }
    }

    fn forget_waiter(&self, id: i64) {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Records a topic change a stream of this instance applied: its
    /// history, its handle's topics now, and, for a change sent by another
    /// instance (`reply_to`), the answer.
    pub(crate) async fn record_change(
        &self,
        handle: &str,
        subject: Option<&str>,
        effective_at: i64,
        filters: &Filters,
        previous: &Filters,
        reply_to: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        let list = |f: &Filters| -> Vec<String> {
            topic_list(f).into_iter().map(|t| t.into_owned()).collect()
        };
        let topics = list(filters);
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO herald_handles (handle, subject, topics) VALUES ($1, $2, $3) \
             ON CONFLICT (handle) DO UPDATE SET topics = excluded.topics, updated_at = now()",
        )
        .bind(handle)
        .bind(subject)
        .bind(&topics)
        .execute(&mut *tx)
        .await?;
        // The stream's record may still wait in a batch: its topics before
        // this change start the history, or a resume from before the change
        // would read it with the new topics.
        sqlx::query(
            "INSERT INTO herald_topic_changes (handle, effective_at, topics) \
             SELECT $1, 0, $2 WHERE NOT EXISTS \
             (SELECT 1 FROM herald_topic_changes WHERE handle = $1)",
        )
        .bind(handle)
        .bind(list(previous))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO herald_topic_changes (handle, effective_at, topics) VALUES ($1, $2, $3) \
             ON CONFLICT (handle, effective_at) DO UPDATE SET topics = excluded.topics, \
             changed_at = now()",
        )
        .bind(handle)
        .bind(effective_at)
        .bind(&topics)
        .execute(&mut *tx)
        .await?;
        if let Some(reply_to) = reply_to {
            control::insert(
                &mut tx,
                control::Row::ack(reply_to, Ack::Applied(effective_at)),
            )
            .await?;
        }
        tx.commit().await
    }

    /// Ends one stream (by handle, or by the id of an unnamed one) on
    /// whichever instance holds it; a named one's reconnect is then
    /// answered `409 stream_ended`. `false` when no such stream is known.
    ///
    /// # Errors
    /// [`LogError`] when PostgreSQL cannot answer.
    pub async fn end_stream(&self, target: &str) -> Result<bool, LogError> {
        let mut tx = self.pool().begin().await?;
        let handles = sqlx::query(
            "UPDATE herald_handles SET ended_at = coalesce(ended_at, now()), \
             end_reason = coalesce(end_reason, 'ended') WHERE handle = $1",
        )
        .bind(target)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let streams = sqlx::query(
            "UPDATE herald_streams SET ended_at = now(), end_reason = 'ended' \
             WHERE (handle = $1 OR id = $1) AND ended_at IS NULL",
        )
        .bind(target)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let local = self.holds(target);
        if handles + streams == 0 && !local {
            return Ok(false);
        }
        control::insert(
            &mut tx,
            control::Row {
                kind: "end",
                target: Some(target),
                reason: Some("ended"),
                ..control::Row::default()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Whether a stream of this instance has `target` as handle or id.
    fn holds(&self, target: &str) -> bool {
        let local = self.local();
        local.handles.contains_key(target)
            || target
                .strip_prefix(self.inner.instance.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|key| key.parse::<u64>().ok())
                .is_some_and(|key| local.streams.contains_key(&key))
    }

    /// Revokes `subject`: every stream of it ends on every instance, and
    /// its tokens issued before now are refused for `--revocation-window`.
    ///
    /// # Errors
    /// [`LogError`] when PostgreSQL cannot answer.
    pub async fn revoke(&self, subject: &str) -> Result<crate::auth::Revocation, LogError> {
        let mut tx = self.pool().begin().await?;
        let window = self.inner.settings.revocation_window;
        let (revoked_at, expires_at): (OffsetDateTime, OffsetDateTime) = sqlx::query_as(
            "INSERT INTO herald_revocations (subject, revoked_at, expires_at) \
             VALUES ($1, clock_timestamp(), clock_timestamp() + $2 * interval '1 millisecond') \
             ON CONFLICT (subject) DO UPDATE SET revoked_at = excluded.revoked_at, \
             expires_at = excluded.expires_at RETURNING revoked_at, expires_at",
        )
        .bind(subject)
        .bind(window.as_millis() as f64)
        .fetch_one(&mut *tx)
        .await?;
        // Its named streams are over for good; its records say why.
        sqlx::query(
            "WITH handles AS (UPDATE herald_handles SET ended_at = now(), end_reason = 'revoked' \
             WHERE subject = $1 AND ended_at IS NULL) \
             UPDATE herald_streams SET ended_at = now(), end_reason = 'revoked' \
             WHERE subject = $1 AND ended_at IS NULL",
        )
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        control::insert(
            &mut tx,
            control::Row {
                kind: "revoke",
                subject: Some(subject),
                ..control::Row::default()
            },
        )
        .await?;
        tx.commit().await?;
        let revocation = crate::auth::Revocation {
            revoked_at,
            expires_at,
        };
        // This instance refuses at once; the others when the control row
        // reaches them.
        self.inner.revoked.insert(subject, revocation);
        self.end_local(|s| s.subject.as_deref() == Some(subject), Ending::Revoked);
        Ok(revocation)
    }

    /// Sends `ending` to every local stream `which` picks.
    fn end_local(&self, which: impl Fn(&LocalStream) -> bool, ending: Ending) -> usize {
        let local = self.local();
        let mut n = 0;
        for s in local.streams.values().filter(|s| which(s)) {
            s.control.send(Command::End(ending));
            n += 1;
        }
        n
    }
}

impl Enrolment {
    /// The stream's id in the registry.
    pub fn id(&self) -> String {
        self.registry.stream_id(self.local.key)
    }

    /// Its mailbox.
    pub fn control(&self) -> &Control {
        &self.local.control
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records the stream's end: why, and the last id written to it.
    pub fn end(
        &self,
        reason: &'static str,
        last_id: i64,
        reset_after: Option<i64>,
        events: u64,
        lived: Duration,
    ) {
        tracing::info!(
            stream = %self.id(),
            instance = %self.registry.inner.instance,
            reason,
            last_id,
            reset_after,
            events,
            duration_ms = lived.as_millis() as u64,
            "stream ended"
        );
        let _ = self.registry.inner.writer.send(writer::Op::End {
            key: self.local.key,
            at: OffsetDateTime::now_utc(),
            reason,
            last_id,
            reset_after,
            queued: tokio::time::Instant::now(),
        });
    }

    /// Records the stream's topics now, on its record (its handle's
    /// history is written by [`Registry::record_change`]).
    pub fn topics_changed(&self, filters: &Filters) {
        metrics::counter!(telemetry::STREAM_TOPIC_CHANGES).increment(1);
        let _ = self.registry.inner.writer.send(writer::Op::Topics {
            key: self.local.key,
            filters: filters.clone(),
            queued: tokio::time::Instant::now(),
        });
    }
}

impl Drop for Enrolment {
    fn drop(&mut self) {
        let key = self.local.key;
        let mut local = self.registry.local();
        local.streams.remove(&key);
        if let Some(handle) = &self.local.handle
            && local.handles.get(handle) == Some(&key)
        {
            local.handles.remove(handle);
        }
    }
}

/// Topics as the registry keeps them; a text that is no longer a filter
/// (none should be) is left out.
fn parse_topics(topics: &[String]) -> Filters {
    let kept: Vec<&String> = topics
        .iter()
        .filter(|t| crate::event::TopicFilter::parse(t).is_ok())
        .collect();
    Filters::parse_list(&kept).unwrap_or_default()
}

/// A new id for this run of this instance: random, so that a restarted
/// instance never takes over a dead one's streams.
pub(crate) fn new_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}
