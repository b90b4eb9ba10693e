//! One subscriber's stream: its opening frame, the resume from its cursor (ring or
//! log), the hand-over to live frames from the hub, heartbeats, and its end
//! (fell behind, or the instance is draining).
//!
//! The hand-over has no gap and no duplicate because of two rules:
//! - replay reads the log in pages until the hub's ring covers the cursor,
//!   then copies the ring and registers for live frames under one hub lock
//!   ([`Hub::attach`]);
//! - the stream keeps the id of the last event it wrote and drops any frame
//!   at or below it, so an event seen both in a page and live goes out once.
//!
//! Nothing here answers with an HTTP error: by the time this runs the client
//! has its `200 text/event-stream`. A database that cannot be reached while
//! resuming is retried behind heartbeats, because a browser's `EventSource`
//! gives up for good on any other answer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use time::OffsetDateTime;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::control::{ChangeFailed, Command, Ending};
use super::drain::EndWatch;
use super::expiry::{Expiry, ExpiryWatch};
use super::record::{EndReason, Record};
use super::replay::{Page, ReplaySource};
use super::{Start, StreamRequest, StreamSettings};
use crate::event::{self, Filters, Frame, ResetReason};
use crate::hub::{Attach, Hub, Registration};
use crate::log::{Bounds, EventLog, LogError};
use crate::registry::Enrolment;
use crate::telemetry;

/// One live frame in this many is sampled for the delivery-lag histogram.
const LAG_SAMPLE: u64 = 64;
/// Wait before retrying a replay query that failed.
const RETRY_QUERY_AFTER: Duration = Duration::from_secs(1);

enum State {
    /// Before the opening frame (`retry:`, `event: stream`) went out.
    Opening,
    /// Deciding where to start: needs the log's head if the cursor is outside
    /// what the hub knows.
    Resolve,
    /// Reading the log from `cursor`.
    Replay,
    /// A query is running; heartbeats continue meanwhile.
    Querying(BoxFuture<'static, Result<Step, LogError>>),
    /// A query failed; try again at `until`.
    Backoff {
        until: Instant,
        then: Retry,
    },
    Live(Registration),
    Done,
}

#[derive(Clone, Copy)]
enum Retry {
    Resolve,
    Replay,
}

/// What [`Subscription::wait`] woke up for.
enum Wake {
    Query(Result<Step, LogError>),
    BackoffOver(Retry),
    Frame(Option<Arc<Frame>>),
    Ping,
    /// The instance is stopping and this stream's drain slot has come.
    End,
    Expiry(Expiry),
    /// A command may be in the stream's mailbox.
    Control,
    /// A topic change was recorded (or not).
    Recorded(Result<(), sqlx::Error>),
}

enum Step {
    Bounds(Bounds),
    /// The cursor a `since=` time maps to.
    Since(i64),
    Page {
        page: Page,
        /// The hub's head before the query: every event up to it was
        /// committed before the query's snapshot.
        hub_head: i64,
    },
}

pub struct Subscription<L: ReplaySource = EventLog> {
    hub: Hub,
    log: L,
    filters: Filters,
    settings: Arc<StreamSettings>,
    /// The client's `Last-Event-ID`, if any.
    resume: Option<i64>,
    /// A start time still to be turned into a cursor.
    since: Option<OffsetDateTime>,
    /// The cursor came from `since=` and nothing has been written yet: a
    /// pruning floor above it moves the start to the oldest event held
    /// (what `since=` asks for), rather than resetting.
    from_since: bool,
    message_events: bool,
    /// Cancelled by the hub if this subscriber falls behind; its writer
    /// then ends the stream (or, through hyper, the connection).
    lagged: CancellationToken,
    /// Id of the last event written (or skipped past): nothing at or below it
    /// is written again.
    cursor: i64,
    read_database: bool,
    state: State,
    out: VecDeque<Bytes>,
    next_ping: Instant,
    /// Fires at or before `next_ping`; re-armed only when it fires.
    ping_timer: Pin<Box<Sleep>>,
    end: EndWatch,
    expiry: ExpiryWatch,
    record: Record,
    /// Events written before the stream went live (the replay).
    replayed: u64,
    /// A named stream's handle, subject, topics over time and changes
    /// under way (boxed: an unnamed stream carries one pointer for it).
    named: Option<Box<Named>>,
    /// Held for the stream's lifetime: the instance waits for these to go.
    _tracked: TaskTrackerToken,
}

/// What a named stream carries beyond an unnamed one.
struct Named {
    handle: String,
    subject: Option<String>,
    /// Its topics over time since the cursor it resumed from: `(effective_at,
    /// filters)`, oldest first, each for the ids above its `effective_at`
    /// (the first also for those at or below). Empty when one set of topics
    /// covers every id the stream can write; the hub then matches exactly.
    schedule: Vec<(i64, Filters)>,
    /// A topic change applied to the hub, being recorded.
    switch: Option<Switch>,
    /// Topic changes that came while the stream was not live, or while
    /// another was being recorded; applied in turn.
    deferred: VecDeque<TopicsAsked>,
}

impl Named {
    /// Whether a frame of `topic` at `id` is one the stream's topics at
    /// that id take.
    fn takes(&self, id: i64, topic: &str) -> bool {
        let Some(first) = self.schedule.first() else {
            return true;
        };
        let in_force = self
            .schedule
            .iter()
            .rev()
            .find(|(at, _)| *at < id)
            .unwrap_or(first);
        in_force.1.matches(topic)
    }
}

struct TopicsAsked {
    filters: Filters,
    reply_to: Option<i64>,
    reply: tokio::sync::oneshot::Sender<Result<i64, ChangeFailed>>,
}

/// A topic change applied to the hub at `at`: frames up to `at` follow the
/// old topics and are still in the queue; the later ones wait until the
/// change is recorded, then an `event: stream` frame with `id: at` goes out
/// before them.
struct Switch {
    at: i64,
    filters: Filters,
    asked: Option<TopicsAsked>,
    record: BoxFuture<'static, Result<(), sqlx::Error>>,
}

/// What a subscription is made of, apart from the request.
pub struct Wiring<L> {
    pub hub: Hub,
    pub log: L,
    pub settings: Arc<StreamSettings>,
    /// Cancelled when the instance begins to stop.
    pub shutdown: CancellationToken,
    pub tracked: TaskTrackerToken,
    /// Cancelled by the hub when this subscriber falls behind. A writer that
    /// must end more than the stream when that happens (hyper: the
    /// connection) passes a token of its own.
    pub lagged: CancellationToken,
    /// When the caller's token expires: the stream ends then.
    pub expires_at: Option<OffsetDateTime>,
    /// Its place in the registry; none in unit tests.
    pub enrolment: Option<Enrolment>,
    /// A named stream: its handle, subject and topics over time.
    pub named: Option<NamedWiring>,
}

/// A named stream's handle, its subject, and its topics over time since
/// the cursor (`(effective_at, filters)`, oldest first).
pub type NamedWiring = (String, Option<String>, Vec<(i64, Filters)>);

impl<L: ReplaySource> Subscription<L> {
    pub fn new(request: StreamRequest, parts: Wiring<L>) -> Self {
        let Wiring {
            hub,
            log,
            settings,
            shutdown,
            tracked,
            lagged,
            expires_at,
            enrolment,
            named,
        } = parts;
        Self {
            end: EndWatch::next(shutdown, settings.drain),
            expiry: ExpiryWatch::new(expires_at, settings.expiry_warning),
            named: named.map(|(handle, subject, schedule)| {
                Box::new(Named {
                    handle,
                    subject,
                    // One set of topics throughout needs no schedule.
                    schedule: if schedule.len() > 1 {
                        schedule
                    } else {
                        Vec::new()
                    },
                    switch: None,
                    deferred: VecDeque::new(),
                })
            }),
            next_ping: Instant::now() + settings.heartbeat,
            ping_timer: Box::pin(sleep_until(Instant::now() + settings.heartbeat)),
            hub,
            log,
            filters: request.filters,
            settings,
            resume: match request.start {
                Start::After(id) => Some(id),
                Start::Now | Start::Since(_) => None,
            },
            since: match request.start {
                Start::Since(time) => Some(time),
                Start::Now | Start::After(_) => None,
            },
            from_since: matches!(request.start, Start::Since(_)),
            message_events: request.message_events,
            cursor: 0,
            read_database: false,
            state: State::Opening,
            out: VecDeque::new(),
            record: Record::new(lagged.clone(), enrolment),
            replayed: 0,
            lagged,
            _tracked: tracked,
        }
    }

    /// The next bytes to write, or `None` when the stream ends.
    ///
    /// Cancel-safe: every wait keeps its state in `self` (a query future is
    /// polled in place), so a caller may drop this future, for instance to
    /// notice that the client went away, and call again.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.ready_chunk() {
                return Some(chunk);
            }
            if matches!(self.state, State::Done) {
                return None;
            }
            match self.wait().await {
                Wake::Query(result) => self.on_query(result),
                Wake::BackoffOver(then) => {
                    self.state = match then {
                        Retry::Resolve => State::Resolve,
                        Retry::Replay => State::Replay,
                    };
                }
                Wake::Frame(Some(frame)) => self.write_event(&frame),
                // The hub dropped this subscriber: it fell behind. Ending the
                // stream makes the client resume from its last id.
                Wake::Frame(None) => return self.finish(EndReason::Lagged),
                Wake::End => return self.finish(EndReason::Drain),
                Wake::Expiry(Expiry::End) => return self.finish(EndReason::TokenExpired),
                Wake::Expiry(Expiry::Warn(expires_at)) => {
                    self.out.push_back(event::auth_expiring_frame(expires_at));
                }
                // An end from outside has a last frame to send first: the
                // loop sends what is queued, then sees the end.
                Wake::Control => {
                    if let Some(reason) = self.on_commands() {
                        self.end(reason);
                    }
                }
                Wake::Recorded(result) => {
                    if let Some(reason) = self.on_recorded(result) {
                        self.end(reason);
                    }
                }
                Wake::Ping => {
                    // The timer is only re-armed when it fires, not per
                    // frame: a frame just moves `next_ping` on.
                    let now = Instant::now();
                    if now >= self.next_ping {
                        self.next_ping = now + self.settings.heartbeat;
                        self.ping_timer.as_mut().reset(self.next_ping);
                        return Some(Bytes::from_static(event::PING_FRAME));
                    }
                    self.ping_timer.as_mut().reset(self.next_ping);
                }
            }
        }
    }

    /// The next bytes that are ready without waiting, if any: what replay
    /// and hand-over produced, or a live frame already queued. Advances the
    /// steps that need no waiting (opening, resolving, starting a query).
    pub fn ready_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.out.pop_front() {
                self.next_ping = Instant::now() + self.settings.heartbeat;
                return Some(chunk);
            }
            match std::mem::replace(&mut self.state, State::Done) {
                State::Opening => match self.resume {
                    // A stream that starts now attaches before its first
                    // frame goes out, so whatever commits after the client
                    // has seen it arrives; the frame's `id:` is that point.
                    None if self.since.is_none() => {
                        self.cursor = self.hub.head();
                        self.open_at(self.cursor);
                        self.attach_or_replay();
                    }
                    // A resume opens at the client's own cursor: the
                    // frame's `id:` never moves it.
                    Some(cursor) => {
                        self.open_at(cursor);
                        self.resolve();
                    }
                    // `since=` opens once its time is a cursor.
                    None => self.resolve(),
                },
                State::Resolve => self.resolve(),
                State::Replay => self.query_page(),
                // While a topic change is recorded, later frames wait.
                live @ State::Live(_)
                    if self.named.as_ref().is_some_and(|n| n.switch.is_some()) =>
                {
                    self.state = live;
                    return None;
                }
                State::Live(mut reg) => {
                    let frame = reg.queue.try_recv();
                    self.state = State::Live(reg);
                    match frame {
                        Ok(frame) => self.write_event(&frame),
                        // Empty, or dropped by the hub (then `wait` sees it).
                        Err(_) => return None,
                    }
                }
                waiting @ (State::Querying(_) | State::Backoff { .. } | State::Done) => {
                    self.state = waiting;
                    return None;
                }
            }
        }
    }

    /// Waits for whatever the current state waits for, a heartbeat, or the
    /// stream's end. Borrows the state in place, so dropping it loses nothing.
    async fn wait(&mut self) -> Wake {
        let ping = self.ping_timer.as_mut();
        let end = ending(
            &mut self.end,
            &mut self.expiry,
            self.record.enrolment.as_ref(),
        );
        let switch = self.named.as_mut().and_then(|n| n.switch.as_mut());
        if let (Some(switch), State::Live(_)) = (switch, &self.state) {
            return tokio::select! {
                result = &mut switch.record => Wake::Recorded(result),
                () = ping => Wake::Ping,
                wake = end => wake,
            };
        }
        match &mut self.state {
            State::Querying(query) => tokio::select! {
                result = query => Wake::Query(result),
                () = ping => Wake::Ping,
                wake = end => wake,
            },
            State::Backoff { until, then } => {
                let then = *then;
                tokio::select! {
                    () = sleep_until(*until) => Wake::BackoffOver(then),
                    () = ping => Wake::Ping,
                    wake = end => wake,
                }
            }
            State::Live(reg) => tokio::select! {
                frame = reg.queue.recv() => Wake::Frame(frame),
                () = ping => Wake::Ping,
                wake = end => wake,
            },
            // Nothing else waits (`ready_chunk` advanced it).
            _ => Wake::End,
        }
    }

    fn on_query(&mut self, result: Result<Step, LogError>) {
        self.state = State::Done;
        match result {
            Ok(Step::Bounds(head)) => self.on_head(head),
            Ok(Step::Since(cursor)) => {
                self.open_at(cursor);
                self.since = None;
                self.resume = Some(cursor);
                self.state = State::Resolve;
            }
            Ok(Step::Page { page, hub_head }) => self.on_page(&page, hub_head),
            Err(e) => {
                tracing::warn!(error = %e, "replay query failed; retrying behind heartbeats");
                let resolving =
                    self.since.is_some() || (self.resume.is_some() && !self.read_database);
                let then = if resolving {
                    Retry::Resolve
                } else {
                    Retry::Replay
                };
                self.state = State::Backoff {
                    until: Instant::now() + RETRY_QUERY_AFTER,
                    then,
                };
            }
        }
    }

    /// The opening frame, with `after` as its `id:`: a client that drops
    /// before its first event resumes from there (`event::opening_frame`).
    fn open_at(&mut self, after: i64) {
        let (topics, handle) = match &self.named {
            Some(named) => (
                named.schedule.last().map_or(&self.filters, |(_, f)| f),
                Some(named.handle.as_str()),
            ),
            None => (&self.filters, None),
        };
        let frame = event::opening_frame(self.settings.retry, after, topics, handle);
        self.out.push_back(frame);
        self.record.last_id = after;
    }

    /// Where to start: the hub's head for a new client; the cursor for a
    /// resume, after a reset if the log cannot serve it.
    fn resolve(&mut self) {
        if let Some(time) = self.since {
            let query = self.log.cursor_at(time);
            self.state = State::Querying(Box::pin(async move { query.await.map(Step::Since) }));
            return;
        }
        let Some(resume) = self.resume else {
            self.cursor = self.hub.head();
            self.attach_or_replay();
            return;
        };
        if resume > self.hub.head() || resume < self.hub.ring_floor() {
            // Only the log knows whether this cursor is too old or too new:
            // the hub may merely be a few ms behind another instance.
            let query = self.log.head();
            self.state = State::Querying(Box::pin(async move { query.await.map(Step::Bounds) }));
            return;
        }
        self.cursor = resume;
        self.attach_or_replay();
    }

    fn on_head(&mut self, head: Bounds) {
        let resume = self.resume.unwrap_or(0);
        if resume > head.last_id {
            self.reset(ResetReason::CursorAhead, resume, head);
        } else if resume < head.pruned_through {
            self.below_floor(resume, head);
        } else {
            self.cursor = resume;
        }
        self.attach_or_replay();
    }

    /// Events after `cursor` were pruned (or may have been, before the read
    /// that saw `head`): a `since=` start that has written nothing begins
    /// at the oldest event held; anything else is reset.
    fn below_floor(&mut self, cursor: i64, head: Bounds) {
        if self.from_since {
            self.cursor = head.pruned_through;
        } else {
            self.reset(ResetReason::CursorTooOld, cursor, head);
        }
    }

    /// One `event: reset` frame; the client refetches its state, and live
    /// events go on from the log's newest id.
    fn reset(&mut self, reason: ResetReason, cursor: i64, head: Bounds) {
        metrics::counter!(telemetry::RESETS, "reason" => reason_label(reason)).increment(1);
        self.out.push_back(event::reset_frame(
            reason,
            cursor,
            head.oldest_held(),
            head.last_id,
        ));
        self.resume = None;
        self.cursor = head.last_id;
        self.record.reset_after = Some(head.last_id);
    }

    fn attach_or_replay(&mut self) {
        match self.hub.attach(
            self.cursor,
            &self.filters,
            self.settings.queue_capacity,
            &self.lagged,
        ) {
            Attach::Live { backlog, live } => {
                for frame in backlog {
                    self.write_event(&frame);
                }
                if self.resume.is_some() {
                    let source = if self.read_database {
                        "database"
                    } else {
                        "ring"
                    };
                    metrics::counter!(telemetry::RESUMES, "source" => source).increment(1);
                    metrics::histogram!(telemetry::REPLAY_EVENTS, "source" => source)
                        .record(self.replayed as f64);
                }
                self.state = State::Live(live);
                self.next_topics();
            }
            Attach::NotCovered => self.state = State::Replay,
        }
    }

    fn query_page(&mut self) {
        self.read_database = true;
        let query = self.log.page(self.cursor, self.filters.clone());
        let hub_head = self.hub.head();
        self.state = State::Querying(Box::pin(async move {
            let page = query.await?;
            Ok(Step::Page { page, hub_head })
        }));
    }

    fn on_page(&mut self, page: &Page, hub_head: i64) {
        if page.head.pruned_through > self.cursor {
            // Retention pruned events this replay had not reached: going on
            // would pass over them in silence.
            self.below_floor(self.cursor, page.head);
            self.attach_or_replay();
            return;
        }
        // The start is settled: from here a floor passing the cursor is a
        // gap, whatever the start was.
        self.from_since = false;
        let complete = page.complete;
        for ev in &page.events {
            self.write_event(&ev.to_frame());
        }
        if complete {
            // No more matching events up to `hub_head`.
            self.cursor = self.cursor.max(hub_head);
        }
        self.attach_or_replay();
    }

    /// Queues a frame unless it is at or below the cursor.
    fn write_event(&mut self, frame: &Frame) {
        if frame.id <= self.cursor {
            return;
        }
        if let Some(named) = &self.named
            && !named.takes(frame.id, frame.topic.as_str())
        {
            return;
        }
        self.cursor = frame.id;
        self.record.last_id = frame.id;
        self.from_since = false;
        if self.message_events {
            self.out.extend(frame.without_event_line());
        } else {
            self.out.push_back(frame.bytes.clone());
        }
        telemetry::events_delivered().increment(1);
        self.record.events += 1;
        if !matches!(self.state, State::Live(_)) {
            self.replayed += 1;
        } else if self.record.events.is_multiple_of(LAG_SAMPLE) {
            // Commit to write, for a sample of live frames: a histogram
            // sample per frame would cost more than the frame.
            let lag = time::OffsetDateTime::now_utc() - frame.committed;
            metrics::histogram!(telemetry::DELIVERY_LAG).record(lag.as_seconds_f64().max(0.0));
        }
    }

    /// The commands in the mailbox: an end ends the stream (with its last
    /// frame); topic changes are applied in turn.
    fn on_commands(&mut self) -> Option<EndReason> {
        let commands = match &self.record.enrolment {
            Some(enrolment) => enrolment.control().take(),
            None => return None,
        };
        for command in commands {
            match command {
                Command::End(ending) => return Some(self.ended_from_outside(ending)),
                Command::Topics {
                    filters,
                    reply_to,
                    reply,
                } => match &mut self.named {
                    Some(named) => named.deferred.push_back(TopicsAsked {
                        filters,
                        reply_to,
                        reply,
                    }),
                    // Only named streams are steered.
                    None => {
                        let _ = reply.send(Err(ChangeFailed::Gone));
                    }
                },
            }
        }
        self.next_topics();
        None
    }

    /// The last frame of a stream ended by a command, and why it ended.
    fn ended_from_outside(&mut self, ending: Ending) -> EndReason {
        let (event, data, reason) = match ending {
            Ending::Replaced { cap_of, cap } => (
                "replaced",
                serde_json::json!({ "reason": cap_of.reason(), "cap": cap }),
                EndReason::Replaced,
            ),
            Ending::Revoked => (
                "revoked",
                serde_json::json!({ "reason": "subject_revoked" }),
                EndReason::Revoked,
            ),
            Ending::Ended => (
                "revoked",
                serde_json::json!({ "reason": "stream_ended" }),
                EndReason::Revoked,
            ),
            Ending::Superseded => return EndReason::Superseded,
        };
        self.out.push_back(event::ended_frame(event, &data));
        reason
    }

    /// Applies the next topic change asked for, if the stream is live and
    /// no other is being recorded: the hub takes the new topics at its
    /// head, which becomes the change's `effective_at`.
    fn next_topics(&mut self) {
        let (Some(named), State::Live(reg)) = (&mut self.named, &self.state) else {
            return;
        };
        if named.switch.is_some() {
            return;
        }
        let Some(asked) = named.deferred.pop_front() else {
            return;
        };
        let Some(enrolment) = &self.record.enrolment else {
            let _ = asked.reply.send(Err(ChangeFailed::Gone));
            return;
        };
        let at = self.hub.reattach(reg, &asked.filters);
        let previous = named
            .schedule
            .last()
            .map_or_else(|| self.filters.clone(), |(_, f)| f.clone());
        self.filters = asked.filters.clone();
        if !named.schedule.is_empty() {
            named.schedule.push((at, asked.filters.clone()));
        }
        let registry = enrolment.registry().clone();
        let handle = named.handle.clone();
        let subject = named.subject.clone();
        let filters = asked.filters.clone();
        let reply_to = asked.reply_to;
        named.switch = Some(Switch {
            at,
            filters: asked.filters.clone(),
            asked: Some(asked),
            record: Box::pin(async move {
                registry
                    .record_change(
                        &handle,
                        subject.as_deref(),
                        at,
                        &filters,
                        &previous,
                        reply_to,
                    )
                    .await
            }),
        });
    }

    /// The change being recorded is: the frames up to its `effective_at`
    /// go out, then its `event: stream` frame, then the later ones.
    fn on_recorded(&mut self, result: Result<(), sqlx::Error>) -> Option<EndReason> {
        let switch = self.named.as_mut()?.switch.take()?;
        let Switch {
            at, filters, asked, ..
        } = switch;
        let mut later = None;
        let mut before = Vec::new();
        if let State::Live(reg) = &mut self.state {
            while let Ok(frame) = reg.queue.try_recv() {
                if frame.id > at {
                    later = Some(frame);
                    break;
                }
                before.push(frame);
            }
        }
        for frame in &before {
            self.write_event(frame);
        }
        let reply = asked.map(|a| a.reply);
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot record a topic change; ending the stream");
            if let Some(reply) = reply {
                let _ = reply.send(Err(ChangeFailed::Unrecorded));
            }
            return Some(EndReason::Error);
        }
        let handle = self.named.as_ref().map_or("", |n| n.handle.as_str());
        self.out
            .push_back(event::topics_changed_frame(handle, at, &filters));
        self.cursor = self.cursor.max(at);
        self.record.last_id = self.cursor;
        if let Some(enrolment) = &self.record.enrolment {
            enrolment.topics_changed(&filters);
            tracing::info!(
                stream = %enrolment.id(),
                handle,
                subject = self.named.as_ref().and_then(|n| n.subject.as_deref()).unwrap_or(""),
                topics = ?event::topic_list(&filters),
                effective_at = at,
                "stream topics changed"
            );
        }
        if let Some(reply) = reply {
            let _ = reply.send(Ok(at));
        }
        if let Some(frame) = later {
            self.write_event(&frame);
        }
        self.next_topics();
        None
    }

    /// Ends the stream for `reason`, unless it already ended for another.
    /// Writers call this for what only they see (the client went away or
    /// stopped reading).
    pub fn end(&mut self, reason: EndReason) {
        self.record.reason.get_or_insert(reason);
        self.state = State::Done;
    }

    fn finish(&mut self, reason: EndReason) -> Option<Bytes> {
        self.end(reason);
        None
    }

    /// Whether the stream is live (attached to the hub): its frames are
    /// the hub's shared bytes, which a writer should not copy.
    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Live(_))
    }
}

/// The stream's end, whichever comes first: its drain slot, or its
/// token's expiry (or the warning before it); or a command.
async fn ending(
    end: &mut EndWatch,
    expiry: &mut ExpiryWatch,
    enrolment: Option<&Enrolment>,
) -> Wake {
    let control = async {
        match enrolment {
            Some(enrolment) => enrolment.control().wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = end.wait() => Wake::End,
        e = expiry.wait() => Wake::Expiry(e),
        () = control => Wake::Control,
    }
}

fn reason_label(reason: ResetReason) -> &'static str {
    match reason {
        ResetReason::CursorTooOld => "cursor_too_old",
        ResetReason::CursorAhead => "cursor_ahead",
    }
}
