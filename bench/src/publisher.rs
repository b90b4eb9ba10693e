//! Publishers: each a keep-alive connection that sends one request at a
//! time (so its events commit in its own order), flat out or on a fixed
//! schedule. On a schedule, a request the server made late (its previous
//! answer came after this one was due) counts its latency from when it was
//! due, not when it went out, so a server that falls behind is not flattered
//! by the client waiting for it (coordinated omission).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::http::Conn;
use crate::net::Sources;
use crate::payload;
use crate::stats;
use crate::target::Target;
use crate::track::Bits;

/// Consecutive failed requests after which a publisher gives up.
const MAX_CONSECUTIVE_ERRORS: u32 = 50;

/// What one publisher is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub index: u32,
    pub topic: Arc<str>,
    /// Events to publish at most.
    pub events: u64,
    /// Time between requests (`None`: flat out).
    pub interval: Option<Duration>,
    /// When the first request is due, on a schedule.
    pub first_due: Instant,
    /// Events per request.
    pub batch: usize,
    pub payload_bytes: usize,
    /// No request starts after this.
    pub until: Instant,
    pub stop: CancellationToken,
}

/// What one publisher did.
#[derive(Debug)]
pub struct Outcome {
    /// Sequence numbers the server acknowledged (2xx).
    pub acked: Bits,
    pub requests: u64,
    pub acked_events: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Request latency, µs.
    pub latency: Histogram<u64>,
    pub finished: Instant,
}

/// Publishes as planned.
pub async fn run(target: Arc<dyn Target>, sources: Arc<Sources>, plan: Plan) -> Outcome {
    let mut out = Outcome {
        acked: Bits::default(),
        requests: 0,
        acked_events: 0,
        errors: 0,
        first_error: None,
        latency: stats::histogram(),
        finished: Instant::now(),
    };
    let source = sources.pick();
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    let mut due = plan.first_due;
    let mut prev_done = Instant::now();
    let mut consecutive_errors = 0;
    while seq < plan.events && !plan.stop.is_cancelled() {
        if plan.interval.is_some() {
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = plan.stop.cancelled() => break,
            }
        } else {
            due = Instant::now();
        }
        if Instant::now() >= plan.until {
            break;
        }
        // Latency counts from when the request was due only if the server
        // made it late (its previous answer came after that); otherwise
        // from when it went out, so timer slack is not charged to the server.
        let start = if prev_done > due { due } else { Instant::now() };
        let n = (plan.events - seq).min(plan.batch as u64);
        let sent = payload::now_nanos();
        let events: Vec<String> = (seq..seq + n)
            .map(|s| payload::event(plan.index, s, sent, plan.payload_bytes))
            .collect();
        let request = target.publish_request(&plan.topic, &events);
        out.requests += 1;
        match send(&mut conn, &*target, source, &request).await {
            Ok(()) => {
                stats::record(&mut out.latency, micros(start.elapsed()));
                for s in seq..seq + n {
                    out.acked.insert(s);
                }
                out.acked_events += n;
                consecutive_errors = 0;
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
                consecutive_errors += 1;
                if consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        seq += n;
        prev_done = Instant::now();
        if let Some(interval) = plan.interval {
            due += interval;
        }
    }
    out.finished = Instant::now();
    out
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Sends one request on `conn` (opening it if needed) and checks for 2xx.
async fn send(
    conn: &mut Option<Conn>,
    target: &dyn Target,
    source: Option<IpAddr>,
    request: &[u8],
) -> anyhow::Result<()> {
    if conn.is_none() {
        *conn = Some(Conn::open(target.addr(), source).await?);
    }
    let c = conn.as_mut().expect("opened above");
    let res = match c.roundtrip(request).await {
        Ok(res) => res,
        Err(e) => {
            *conn = None;
            return Err(e);
        }
    };
    if res.close {
        *conn = None;
    }
    if !(200..300).contains(&res.status) {
        let body = String::from_utf8_lossy(&res.body[..res.body.len().min(300)]).into_owned();
        bail!("publish answered {}: {body}", res.status);
    }
    Ok(())
}

/// A connection for the harness's own publishes (sync events, the probe
/// event of the idle scenario).
pub struct Control {
    target: Arc<dyn Target>,
    source: Option<IpAddr>,
    conn: Option<Conn>,
}

impl Control {
    pub fn new(target: Arc<dyn Target>, sources: &Sources) -> Self {
        Self {
            target,
            source: sources.pick(),
            conn: None,
        }
    }

    /// Publishes one event with `data` to `topic`.
    ///
    /// # Errors
    /// The request fails or is refused.
    pub async fn publish(&mut self, topic: &str, data: String) -> anyhow::Result<()> {
        let request = self.target.publish_request(topic, &[data]);
        send(&mut self.conn, &*self.target, self.source, &request).await
    }
}
