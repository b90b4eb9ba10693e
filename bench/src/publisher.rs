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
use crate::target::{Outgoing, Target};
use crate::track::Bits;

/// Consecutive failed requests after which a publisher gives up.
const MAX_CONSECUTIVE_ERRORS: u32 = 50;

/// Where a publisher's events go.
#[derive(Debug, Clone)]
pub enum Topics {
    /// Every event to one topic.
    One(Arc<str>),
    /// The events spread evenly over the topics, the publishers
    /// interleaved: event `seq` of publisher `index` goes to
    /// `topics[spread(index, seq, publishers, topics.len())]`.
    Spread {
        topics: Arc<[Arc<str>]>,
        publishers: usize,
    },
}

/// The topic (index) of event `seq` of publisher `index` when `publishers`
/// publish over `topics` together. Their events, numbered in the order they
/// are due (n = seq × publishers + index), go to topic n × stride mod
/// topics, with a stride prime to `topics`: every topic gets exactly every
/// `topics`-th event, and events due close together land far apart, so any
/// stretch of time reaches every part of the topic list alike (consecutive
/// topics would sweep through the list in order, and a group of clients on
/// one part of it, the storm's, would see events only now and then).
pub fn spread(index: u32, seq: u64, publishers: usize, topics: usize) -> usize {
    let topics = topics.max(1) as u64;
    let n = seq * publishers as u64 + u64::from(index);
    // Primes; a prime is prime to `topics` unless it divides it.
    let stride = [7_919_u64, 104_729, 1_299_709]
        .into_iter()
        .find(|&p| !topics.is_multiple_of(p))
        .unwrap_or(1);
    ((n % topics) * stride % topics) as usize
}

impl Topics {
    fn of(&self, index: u32, seq: u64) -> &str {
        match self {
            Self::One(t) => t,
            Self::Spread { topics, publishers } => {
                &topics[spread(index, seq, *publishers, topics.len())]
            }
        }
    }
}

/// What one publisher is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub index: u32,
    pub topics: Topics,
    /// Publish fillers (counted by no subscriber) instead of measured events.
    pub filler: bool,
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
    /// When the last request the server acknowledged went out.
    pub last_acked_sent: Option<Instant>,
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
        last_acked_sent: None,
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
        let data: Vec<String> = (seq..seq + n)
            .map(|s| {
                if plan.filler {
                    payload::filler(s, plan.payload_bytes)
                } else {
                    payload::event(plan.index, s, sent, plan.payload_bytes)
                }
            })
            .collect();
        let events: Vec<Outgoing<'_>> = (seq..seq + n)
            .zip(&data)
            .map(|(s, data)| Outgoing {
                topic: plan.topics.of(plan.index, s),
                data,
            })
            .collect();
        let request = target.publish_request(&events);
        out.requests += 1;
        let sent_at = Instant::now();
        match send(&mut conn, &*target, source, &request).await {
            Ok(()) => {
                out.last_acked_sent = Some(sent_at);
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
        let request = self
            .target
            .publish_request(&[Outgoing { topic, data: &data }]);
        send(&mut self.conn, &*self.target, self.source, &request).await
    }

    /// Publishes `events` (topic, data), as many to a request as the
    /// target takes.
    ///
    /// # Errors
    /// A request fails or is refused.
    pub async fn publish_many(&mut self, events: &[(&str, String)]) -> anyhow::Result<()> {
        for chunk in events.chunks(self.target.max_batch()) {
            let outgoing: Vec<Outgoing<'_>> = chunk
                .iter()
                .map(|(topic, data)| Outgoing { topic, data })
                .collect();
            let request = self.target.publish_request(&outgoing);
            send(&mut self.conn, &*self.target, self.source, &request).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_reaches_every_topic_equally_and_every_part_of_the_list_soon() {
        let (publishers, topics) = (64, 12_000);
        let mut hits = vec![0; topics];
        let mut last_part = 0;
        for seq in 0..(topics / publishers + 1) as u64 * 3 {
            for index in 0..publishers as u32 {
                let n = seq * publishers as u64 + u64::from(index);
                if n < 3 * topics as u64 {
                    let t = spread(index, seq, publishers, topics);
                    hits[t] += 1;
                    // The last sixth of the list (a storm's 2,000 of 12,000).
                    if n < 60 && t >= 10_000 {
                        last_part += 1;
                    }
                }
            }
        }
        assert!(
            hits.iter().all(|&h| h == 3),
            "each topic every 12,000th event"
        );
        assert!(
            last_part >= 5,
            "60 events due together reach the last sixth: {last_part}"
        );
        // 7,919 divides 7,919 topics: the next prime is the stride.
        assert_eq!(spread(0, 1, 1, 7_919), 104_729 % 7_919);
    }
}
