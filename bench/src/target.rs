//! The servers the harness can drive. Each scenario is written once against
//! [`Target`]; herald and nchan differ only in how a publish and a
//! subscribe are spelled and how their event ids compare.

use std::fmt;
use std::net::SocketAddr;

use crate::http;
use crate::workload::WildcardFilter;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// herald: POST /v1/events, GET /v1/stream.
    Herald,
    /// nginx with the nchan module: POST /pub?id=, GET /sub?id=.
    Nchan,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Herald => "herald",
            Self::Nchan => "nchan",
        })
    }
}

/// A server under test.
pub trait Target: Send + Sync + 'static {
    fn kind(&self) -> Kind;

    /// Where it listens.
    fn addr(&self) -> SocketAddr;

    /// Most events one publish request may carry.
    fn max_batch(&self) -> usize;

    /// A complete publish request of `events` (at most [`max_batch`] of
    /// them).
    ///
    /// [`max_batch`]: Target::max_batch
    fn publish_request(&self, events: &[Outgoing<'_>]) -> Vec<u8>;

    /// A complete subscribe request for `topic`, resuming after
    /// `last_event_id` if given.
    fn subscribe_request(&self, topic: &str, last_event_id: Option<&[u8]>) -> Vec<u8>;

    /// A path that answers `200` once the server is ready.
    fn ready_path(&self) -> &'static str;

    /// The `event:` of the frame a stream opens with, after which it is
    /// live; `None` when the server sends none (the response head is then
    /// the opening).
    fn opening_event(&self) -> Option<&'static [u8]>;

    /// An event id as a number that grows with the stream's order, to count
    /// ids that go backwards; `None` if it cannot be read.
    fn id_order(&self, id: &[u8]) -> Option<u128>;

    /// How a subscriber that watches every topic of a run whose topics all
    /// start with `prefix:` is served (an operator's dashboard).
    fn dashboard(&self, prefix: &str, filter: WildcardFilter) -> Dashboard;
}

/// One event of a publish request.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    /// Its `data`, a JSON text.
    pub data: &'a str,
}

/// How the wildcard subscribers of a run are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dashboard {
    /// The topic (filter, channel) they subscribe to.
    pub subscribe: String,
    /// Appended to every event's topic when publishing: nchan's way to put
    /// each event on a second channel in the same request.
    pub publish_suffix: String,
}

/// Topics both servers accept unencoded in a query string: herald's topic
/// rules (`[A-Za-z0-9._-]` segments separated by `:`), and nchan takes
/// `$arg_id` as written.
pub fn topic(scenario: &str, n: u64) -> String {
    format!(
        "bench:{scenario}:{}-{}-{n}",
        std::process::id(),
        crate::payload::now_nanos() % 1_000_000_000
    )
}

fn host(addr: SocketAddr) -> String {
    addr.to_string()
}

/// herald: `POST /v1/events` (an array is a batch), `GET /v1/stream?topic=`.
#[derive(Debug, Clone)]
pub struct Herald {
    addr: SocketAddr,
    host: String,
}

impl Herald {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: host(addr),
        }
    }
}

impl Target for Herald {
    fn kind(&self) -> Kind {
        Kind::Herald
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn max_batch(&self) -> usize {
        1000
    }

    fn publish_request(&self, events: &[Outgoing<'_>]) -> Vec<u8> {
        let one = |e: &Outgoing<'_>| {
            format!(
                r#"{{"topic":"{}","type":"bench","data":{}}}"#,
                e.topic, e.data
            )
        };
        let body = if let [only] = events {
            one(only)
        } else {
            let parts: Vec<String> = events.iter().map(one).collect();
            format!("[{}]", parts.join(","))
        };
        http::post(
            "/v1/events",
            &self.host,
            "application/json",
            body.as_bytes(),
        )
    }

    fn subscribe_request(&self, topic: &str, last_event_id: Option<&[u8]>) -> Vec<u8> {
        stream_request(
            &format!("/v1/stream?topic={topic}"),
            &self.host,
            last_event_id,
        )
    }

    fn ready_path(&self) -> &'static str {
        "/readyz"
    }

    /// `event: stream`, with the cursor the stream starts after.
    fn opening_event(&self) -> Option<&'static [u8]> {
        Some(b"stream")
    }

    fn id_order(&self, id: &[u8]) -> Option<u128> {
        std::str::from_utf8(id).ok()?.parse().ok()
    }

    /// herald matches filters itself: `*`, or the run's prefix.
    fn dashboard(&self, prefix: &str, filter: WildcardFilter) -> Dashboard {
        Dashboard {
            subscribe: match filter {
                WildcardFilter::All => "*".to_owned(),
                WildcardFilter::Prefix => format!("{prefix}:*"),
            },
            publish_suffix: String::new(),
        }
    }
}

/// nchan: `POST /pub?id=CHANNEL` with the data as the body,
/// `GET /sub?id=CHANNEL` as EventSource (see `bench/nchan/nginx.conf`).
#[derive(Debug, Clone)]
pub struct Nchan {
    addr: SocketAddr,
    host: String,
}

impl Nchan {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: host(addr),
        }
    }
}

impl Target for Nchan {
    fn kind(&self) -> Kind {
        Kind::Nchan
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn max_batch(&self) -> usize {
        1
    }

    fn publish_request(&self, events: &[Outgoing<'_>]) -> Vec<u8> {
        assert_eq!(events.len(), 1, "nchan publishes one message per request");
        http::post(
            &format!("/pub?id={}", events[0].topic),
            &self.host,
            "application/json",
            events[0].data.as_bytes(),
        )
    }

    fn subscribe_request(&self, topic: &str, last_event_id: Option<&[u8]>) -> Vec<u8> {
        stream_request(&format!("/sub?id={topic}"), &self.host, last_event_id)
    }

    fn ready_path(&self) -> &'static str {
        "/healthz"
    }

    fn opening_event(&self) -> Option<&'static [u8]> {
        None
    }

    /// nchan ids are `<unix seconds>:<tag>` (the tag counts messages within
    /// one second), or `<seconds>:[<tag>]` for a multiplexed channel.
    fn id_order(&self, id: &[u8]) -> Option<u128> {
        let text = std::str::from_utf8(id).ok()?;
        let (secs, tag) = text.split_once(':')?;
        let tag = tag.trim_matches(['[', ']']);
        let tag = tag.split(',').next()?;
        Some((secs.parse::<u128>().ok()? << 64) | tag.parse::<u128>().ok()?)
    }

    /// nchan has no filter over channels: a subscriber may multiplex at
    /// most 255 channels, far fewer than a run's topics. So every event is
    /// also published to a channel of the run's own (`<prefix>:all`), in
    /// the same request (`/pub?id=<topic>,<prefix>:all`: the config splits
    /// the id at commas and publishes to both), and the wildcard subscribers
    /// read that channel. Whatever the filter asked for, since the run's
    /// topics are all it publishes.
    fn dashboard(&self, prefix: &str, _: WildcardFilter) -> Dashboard {
        let all = format!("{prefix}:all");
        Dashboard {
            publish_suffix: format!(",{all}"),
            subscribe: all,
        }
    }
}

fn stream_request(path: &str, host: &str, last_event_id: Option<&[u8]>) -> Vec<u8> {
    let id = last_event_id.map(|b| String::from_utf8_lossy(b).into_owned());
    let mut headers = vec![
        ("Accept", "text/event-stream"),
        ("Cache-Control", "no-cache"),
    ];
    if let Some(id) = id.as_deref() {
        headers.push(("Last-Event-ID", id));
    }
    http::get(path, host, &headers)
}

/// A target of `kind` at `addr`.
pub fn make(kind: Kind, addr: SocketAddr) -> std::sync::Arc<dyn Target> {
    match kind {
        Kind::Herald => std::sync::Arc::new(Herald::new(addr)),
        Kind::Nchan => std::sync::Arc::new(Nchan::new(addr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to<'a>(topic: &'a str, data: &'a str) -> Outgoing<'a> {
        Outgoing { topic, data }
    }

    #[test]
    fn herald_batch_is_an_array_and_single_is_an_object() {
        let h = Herald::new("127.0.0.1:8080".parse().unwrap());
        let one = String::from_utf8(h.publish_request(&[to("t", "1")])).unwrap();
        assert!(
            one.ends_with(r#"{"topic":"t","type":"bench","data":1}"#),
            "{one}"
        );
        assert!(one.contains("Content-Length: 37\r\n"), "{one}");
        let two = String::from_utf8(h.publish_request(&[to("t", "1"), to("u", "2")])).unwrap();
        assert!(two.ends_with(
            r#"[{"topic":"t","type":"bench","data":1},{"topic":"u","type":"bench","data":2}]"#
        ));
    }

    #[test]
    fn dashboards_are_a_filter_on_herald_and_a_mirror_channel_on_nchan() {
        let h = Herald::new("127.0.0.1:8080".parse().unwrap());
        let n = Nchan::new("127.0.0.1:8090".parse().unwrap());

        let all = h.dashboard("bench:p", WildcardFilter::All);
        let prefix = h.dashboard("bench:p", WildcardFilter::Prefix);
        let mirror = n.dashboard("bench:p", WildcardFilter::All);
        let topic = format!("bench:p:u1{}", mirror.publish_suffix);
        let published = String::from_utf8(n.publish_request(&[to(&topic, "1")])).unwrap();

        assert_eq!(
            (all.subscribe.as_str(), all.publish_suffix.as_str()),
            ("*", "")
        );
        assert_eq!(prefix.subscribe, "bench:p:*");
        assert_eq!(mirror.subscribe, "bench:p:all");
        assert!(published.starts_with("POST /pub?id=bench:p:u1,bench:p:all HTTP/1.1\r\n"));
    }

    #[test]
    fn resume_sends_last_event_id() {
        let n = Nchan::new("127.0.0.1:8090".parse().unwrap());
        let req = String::from_utf8(n.subscribe_request("c", Some(b"17:2"))).unwrap();
        assert!(req.starts_with("GET /sub?id=c HTTP/1.1\r\n"));
        assert!(req.contains("\r\nLast-Event-ID: 17:2\r\n"));
        assert!(req.contains("\r\nAccept: text/event-stream\r\n"));
    }

    #[test]
    fn ids_order_within_each_server() {
        let n = Nchan::new("127.0.0.1:8090".parse().unwrap());
        assert!(n.id_order(b"1700000000:9") < n.id_order(b"1700000001:0"));
        assert!(n.id_order(b"1700000000:[2]") < n.id_order(b"1700000000:[10]"));
        let h = Herald::new("127.0.0.1:8080".parse().unwrap());
        assert!(h.id_order(b"9") < h.id_order(b"10"));
    }
}
