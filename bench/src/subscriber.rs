//! One subscriber: a raw socket, a `GET` for the stream, the chunked body
//! decoded into the SSE parser, and per frame only a marker search, a
//! correctness record and a latency sample. It reconnects with
//! `Last-Event-ID` when the server ends its stream, as `EventSource` does,
//! so a server that drops slow clients is judged on what clients finally
//! receive. A group may also be put through a reconnect storm
//! ([`crate::group::Storm`]): every connection cut at once, then all
//! reconnecting at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::group::Shared;
use crate::http::{self, BodyDecoder};
use crate::net::{self, Sources};
use crate::payload::{self, Marker};
use crate::sse::{self, Frame};
use crate::target::Target;
use crate::track::Tracker;

/// Bytes read from the socket at once.
const READ_BUF: usize = 8 * 1024;
/// Failed connection attempts in a row after which a subscriber gives up.
const MAX_RECONNECTS: u32 = 20;
/// Wait before a reconnect (`EventSource` would wait the `retry:` hint;
/// shorter here, so a run does not stall).
const RECONNECT_AFTER: Duration = Duration::from_millis(100);
/// Longest wait for a connection and its response head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What one subscriber is asked to do.
#[derive(Debug, Clone)]
pub struct Spec {
    pub index: usize,
    pub topic: Arc<str>,
    /// Resume after this id on the first connection.
    pub last_event_id: Option<Vec<u8>>,
    /// Measured events it must receive to count as caught up.
    pub expect: Option<u64>,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub index: usize,
    pub tracker: Tracker,
    pub pings: u64,
    pub resets: u64,
    pub reconnects: u64,
    pub id_regressions: u64,
    pub failed: bool,
    pub error: Option<String>,
    /// When (since [`Shared::started`]) it had all its expected events.
    pub caught_up: Option<Duration>,
    /// The id of the last sync event it saw: a cursor just before the
    /// measured events.
    pub last_sync_id: Option<Vec<u8>>,
    /// In a storm: when its stream was open again (ns since the epoch).
    pub rejoined_nanos: Option<u64>,
    /// In a storm: events sent before the rejoin and received after it
    /// (what it had missed), and when the last of them arrived.
    pub missed: u64,
    pub last_missed_nanos: Option<u64>,
}

/// Per-stream state that survives reconnects.
struct State {
    out: Outcome,
    expect: Option<u64>,
    /// The last id seen, sent as `Last-Event-ID` on reconnect.
    last_id: Option<Vec<u8>>,
    last_order: Option<u128>,
    synced: bool,
    /// Latencies of the current read, flushed into the shared shards, and
    /// (with a timeline) the send times of those events.
    latencies: Vec<u64>,
    sent: Vec<u64>,
    delivered: u64,
    phase: Phase,
}

/// Where a subscriber is in its group's storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the cut (and in a group without a storm).
    Before,
    /// Cut off, waiting for the rejoin.
    Away,
    /// Reconnected after the rejoin.
    Back,
}

enum End {
    Stopped,
    /// The storm cut the connection.
    Cut,
    /// The stream could not be opened; trying again may help.
    Refused(String),
    /// The stream was open, then ended or failed; resuming may help.
    Lost(String),
}

/// Runs until `shared.stop`, or until it gives up.
pub async fn run(
    target: Arc<dyn Target>,
    sources: Arc<Sources>,
    spec: Spec,
    shared: Arc<Shared>,
) -> Outcome {
    let mut state = State {
        out: Outcome {
            index: spec.index,
            ..Outcome::default()
        },
        expect: spec.expect,
        last_id: spec.last_event_id.clone(),
        last_order: None,
        synced: false,
        latencies: Vec::new(),
        sent: Vec::new(),
        delivered: 0,
        phase: Phase::Before,
    };
    let mut established = false;
    let mut attempts = 0;
    loop {
        match session(
            &*target,
            &sources,
            &spec,
            &shared,
            &mut state,
            &mut established,
        )
        .await
        {
            End::Stopped => break,
            End::Cut => {
                // Reconnects at the rejoin: not a failure, not counted.
                state.phase = Phase::Away;
                let storm = shared.storm.as_ref().expect("only a storm cuts");
                tokio::select! {
                    () = storm.rejoin.cancelled() => state.phase = Phase::Back,
                    () = shared.stop.cancelled() => break,
                }
            }
            End::Lost(why) | End::Refused(why) if shared.stop.is_cancelled() => {
                state.out.error = Some(why);
                break;
            }
            end => {
                let why = match end {
                    // Only failures in a row count against the limit: a
                    // stream the server ends now and then resumes each time.
                    End::Lost(why) => {
                        attempts = 0;
                        why
                    }
                    End::Refused(why) => why,
                    End::Stopped | End::Cut => unreachable!("handled above"),
                };
                if !shared.reconnect || attempts >= MAX_RECONNECTS {
                    state.out.failed = true;
                    shared
                        .first_failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_or_insert_with(|| why.clone());
                    state.out.error = Some(why);
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                state.out.error = Some(why);
                attempts += 1;
                state.out.reconnects += 1;
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT_AFTER) => {}
                    () = shared.stop.cancelled() => break,
                }
            }
        }
    }
    state.out
}

/// One connection: open, check the head, read frames until stopped or lost.
async fn session(
    target: &dyn Target,
    sources: &Sources,
    spec: &Spec,
    shared: &Shared,
    state: &mut State,
    established: &mut bool,
) -> End {
    let stopped = shared.stop.cancelled();
    tokio::pin!(stopped);
    let watch_cut = state.phase == Phase::Before;
    let cut = async {
        match &shared.storm {
            Some(storm) if watch_cut => storm.cut.cancelled().await,
            _ => std::future::pending().await,
        }
    };
    tokio::pin!(cut);
    let opened = tokio::select! {
        biased;
        () = &mut stopped => return End::Stopped,
        () = &mut cut => return End::Cut,
        r = tokio::time::timeout(CONNECT_TIMEOUT, open(target, sources, spec, shared, state.last_id.as_deref())) => r,
    };
    let (mut stream, head, rest) = match opened {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => return End::Refused(format!("{e:#}")),
        Err(_) => return End::Refused("no response head within 30 s".into()),
    };
    if !*established {
        *established = true;
        shared.established.fetch_add(1, Ordering::Relaxed);
    }
    if let (Some(storm), Phase::Back, None) = (&shared.storm, state.phase, state.out.rejoined_nanos)
    {
        state.out.rejoined_nanos = Some(payload::now_nanos());
        storm.rejoined.fetch_add(1, Ordering::Relaxed);
    }

    let mut decoder = BodyDecoder::new(head.framing);
    let mut parser = sse::Parser::with_capacity(READ_BUF);
    let mut raw = rest;
    raw.reserve(READ_BUF);
    loop {
        if let Err(e) = decoder.decode(&raw, parser.buffer()) {
            return End::Lost(format!("{e:#}"));
        }
        let now = payload::now_nanos();
        parser.frames(|f| state.on_frame(f, now, target, shared));
        state.flush(spec.index, shared);
        if decoder.is_done() {
            return End::Lost("the server ended the stream".into());
        }
        raw.clear();
        let read = tokio::select! {
            biased;
            () = &mut stopped => return End::Stopped,
            () = &mut cut => return End::Cut,
            r = stream.read_buf(&mut raw) => r,
        };
        match read {
            Ok(0) => return End::Lost("the server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return End::Lost(format!("read failed: {e}")),
        }
    }
}

/// Opens `spec`'s stream once a connection may be opened (the group's
/// gate); see [`open_stream`].
async fn open(
    target: &dyn Target,
    sources: &Sources,
    spec: &Spec,
    shared: &Shared,
    last_id: Option<&[u8]>,
) -> anyhow::Result<(TcpStream, http::Head, Vec<u8>)> {
    let _permit = match &shared.gate {
        Some(gate) => Some(gate.clone().acquire_owned().await?),
        None => None,
    };
    open_stream(target, sources, &spec.topic, last_id).await
}

/// Connects from the next source address, asks for the stream of `topic`
/// (resuming after `last_id`, if given) and reads a `200
/// text/event-stream` head; returns the stream and the bytes read past
/// the head.
///
/// # Errors
/// The connection fails, or the server answers anything else.
pub async fn open_stream(
    target: &dyn Target,
    sources: &Sources,
    topic: &str,
    last_id: Option<&[u8]>,
) -> anyhow::Result<(TcpStream, http::Head, Vec<u8>)> {
    let mut stream = net::connect(target.addr(), sources.pick())
        .await
        .with_context(|| format!("cannot connect to {}", target.addr()))?;
    stream
        .write_all(&target.subscribe_request(topic, last_id))
        .await?;
    let mut buf = Vec::with_capacity(READ_BUF);
    let (head, len) = http::read_head(&mut stream, &mut buf).await?;
    let event_stream = head
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("text/event-stream"));
    if head.status != 200 || !event_stream {
        let body = String::from_utf8_lossy(&buf[len..buf.len().min(len + 200)]).into_owned();
        bail!(
            "subscribe answered {} ({}): {body}",
            head.status,
            head.content_type.as_deref().unwrap_or("no content type")
        );
    }
    let rest = buf.split_off(len);
    Ok((stream, head, rest))
}

impl State {
    fn on_frame(&mut self, f: &Frame<'_>, now_nanos: u64, target: &dyn Target, shared: &Shared) {
        if f.comment && f.data.is_none() {
            self.out.pings += 1;
        }
        // herald's own `event: stream` frame (a stream's opening) names
        // the position it starts after: its `id:` is where to resume, but
        // it is no event, and on a resume it repeats the client's cursor.
        let event = f.data.is_some() && f.event != Some(b"stream");
        if let Some(id) = f.id {
            // Only events are ordered.
            if event && let Some(order) = target.id_order(id) {
                if self.last_order.is_some_and(|last| order <= last) {
                    self.out.id_regressions += 1;
                }
                self.last_order = Some(order);
            }
            let last = self.last_id.get_or_insert_with(Vec::new);
            last.clear();
            last.extend_from_slice(id);
        }
        if f.event == Some(b"reset") {
            self.out.resets += 1;
        }
        let Some(data) = f.data else { return };
        match payload::parse(data) {
            Some(Marker::Event {
                publisher,
                seq,
                sent_nanos,
            }) => {
                self.delivered += 1;
                self.latencies
                    .push(now_nanos.saturating_sub(sent_nanos) / 1000);
                if shared.timeline.is_some() {
                    self.sent.push(sent_nanos);
                }
                if let (Some(storm), Phase::Back) = (&shared.storm, self.phase)
                    && sent_nanos < storm.rejoin_nanos.load(Ordering::Relaxed)
                {
                    self.out.missed += 1;
                    self.out.last_missed_nanos = Some(now_nanos);
                }
                if self.out.tracker.record(publisher, seq)
                    && self.out.caught_up.is_none()
                    && self.expect.is_some_and(|n| self.out.tracker.unique >= n)
                {
                    self.out.caught_up = Some(shared.started.elapsed());
                    shared.caught_up.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Marker::Sync(_)) => {
                if !self.synced {
                    self.synced = true;
                    shared.synced.fetch_add(1, Ordering::Relaxed);
                }
                self.out.last_sync_id = f.id.map(<[u8]>::to_vec);
            }
            None => {}
        }
    }

    /// Hands this read's samples to the shared counters, once per read
    /// rather than once per event.
    fn flush(&mut self, index: usize, shared: &Shared) {
        if self.delivered > 0 {
            shared
                .delivered
                .fetch_add(self.delivered, Ordering::Relaxed);
            self.delivered = 0;
            let at = u64::try_from(shared.started.elapsed().as_micros()).unwrap_or(u64::MAX);
            shared
                .last_delivery_us
                .fetch_max(at.max(1), Ordering::Relaxed);
        }
        shared.latency.record_all(index, &self.latencies);
        if let Some(t) = &shared.timeline {
            t.record_all(index, &self.sent, &self.latencies);
            self.sent.clear();
        }
        self.latencies.clear();
    }
}
