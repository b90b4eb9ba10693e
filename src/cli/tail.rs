//! `herald tail [TOPIC…]`: follow `GET /v1/stream` (docs/ARCHITECTURE.md, "Subscribe")
//! and print each event, readable or as JSON lines, for as long as the user
//! wants, across dropped connections and server restarts.
//!
//! It reconnects as `EventSource` does (WHATWG HTML §9.2.3): after the
//! server's `retry:` delay, with `Last-Event-ID` set to the last id received,
//! so the server replays exactly what was missed. `--since` and
//! `--last-event-id` say where the first connection starts; until the stream
//! has given an id to resume from, every reconnect starts there again. While
//! the server cannot be reached the delay doubles up to [`MAX_BACKOFF`]. A
//! refusal (4xx, a failed TLS handshake) is final: asking again would be
//! refused again. Stdout carries events only; every notice goes to stderr.

use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use time::format_description::well_known::Rfc3339;

use super::args::{Since, TailArgs};
use super::print::{Printer, reset_notice};
use super::sse::{Item, SseParser};
use super::{
    EXIT_REFUSED, endpoint, handshake_failure, http_client, notice, refusal_reason, retryable,
    transport_error,
};

/// The reconnection delay until the server sends `retry:`.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between attempts while the server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The shortest wait between attempts, whatever `retry:` says.
const MIN_DELAY: Duration = Duration::from_millis(100);
/// How long one attempt may take to get an answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: TailArgs) -> ExitCode {
    let client = match http_client(&args.client, |c| c.connect_timeout(CONNECT_TIMEOUT)) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let tail = Tail::new(&args, client);
    tokio::select! {
        code = tail.follow() => code,
        () = crate::signal::stop() => ExitCode::SUCCESS,
    }
}

/// One `herald tail` and the state it keeps across connections.
struct Tail {
    client: reqwest::Client,
    /// `/v1/stream` with the topic filters.
    url: Url,
    /// `--since`, sent until the stream has given an id to resume from.
    since: Option<Since>,
    /// When the first attempt went out: what a `--since` duration counts
    /// back from, on every attempt.
    started: Option<Instant>,
    idle_timeout: Duration,
    printer: Printer,
    /// The last event id received: the resume cursor (empty before any,
    /// unless `--last-event-id` gave one).
    last_id: String,
    /// The reconnection delay, as the server's `retry:` last set it.
    retry: Duration,
}

/// Why one attempt did not give a stream.
enum Failure {
    /// Asking again would not help: exit with the reason.
    Refused(String),
    /// Worth another try later; the server may say when.
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// `204 No Content`: the server says not to reconnect (WHATWG §9.2.3).
    Done,
}

/// Failed attempts in a row, while the server cannot be reached.
#[derive(Default)]
struct Failures {
    count: u32,
    /// The reason last told: a long outage is told once, not at every try.
    told: String,
}

impl Failures {
    /// Counts one more failure, tells it if it is news, and returns the wait
    /// before the next attempt.
    fn next_wait(
        &mut self,
        retry: Duration,
        reason: String,
        retry_after: Option<Duration>,
    ) -> Duration {
        self.count += 1;
        let wait = backoff(retry, self.count).max(retry_after.unwrap_or_default());
        if reason != self.told {
            notice(format_args!(
                "{reason}; retrying in {}, backing off up to {}",
                humantime::format_duration(wait),
                humantime::format_duration(MAX_BACKOFF.max(wait))
            ));
            self.told = reason;
        }
        wait
    }
}

impl Tail {
    fn new(args: &TailArgs, client: reqwest::Client) -> Self {
        let mut url = endpoint(&args.client.url, "v1/stream");
        {
            let mut query = url.query_pairs_mut();
            for topic in &args.topics {
                query.append_pair("topic", topic);
            }
        }
        if args.topics.is_empty() {
            url.set_query(None);
        }
        Self {
            client,
            url,
            since: args.since,
            started: None,
            idle_timeout: args.idle_timeout,
            printer: Printer::new(args.json),
            // Sent as `Last-Event-ID`, as a reconnect sends it: one path.
            last_id: args
                .last_event_id
                .map_or_else(String::new, |id| id.to_string()),
            retry: DEFAULT_RETRY,
        }
    }

    /// Connects, prints, reconnects; returns only on a refusal or when
    /// stdout is gone.
    async fn follow(mut self) -> ExitCode {
        let mut connected_before = false;
        let mut failures = Failures::default();
        loop {
            let wait = match self.connect().await {
                Ok(response) => {
                    failures = Failures::default();
                    if connected_before {
                        notice(format_args!("reconnected"));
                    } else {
                        let after = if self.last_id.is_empty() {
                            String::new()
                        } else {
                            format!(", starting after id {}", self.last_id)
                        };
                        notice(format_args!("connected to {}{after}", response.url()));
                        connected_before = true;
                    }
                    let why = match self.read(response).await {
                        Ok(why) => why,
                        Err(code) => return code,
                    };
                    notice(format_args!(
                        "connection lost ({why}); {}",
                        self.reconnecting()
                    ));
                    self.retry.max(MIN_DELAY)
                }
                Err(Failure::Refused(reason)) => {
                    notice(format_args!("{reason}"));
                    return ExitCode::from(EXIT_REFUSED);
                }
                Err(Failure::Done) => {
                    notice(format_args!("the server ended the stream for good (204)"));
                    return ExitCode::SUCCESS;
                }
                Err(Failure::Unavailable {
                    reason,
                    retry_after,
                }) => failures.next_wait(self.retry, reason, retry_after),
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn reconnecting(&self) -> String {
        if self.last_id.is_empty() {
            "reconnecting…".to_owned()
        } else {
            format!("reconnecting from id {}…", self.last_id)
        }
    }

    /// The URL of the next attempt: the filters, and `since=` while there
    /// is no id to resume from, counted back from the first attempt so that
    /// every attempt asks for the same moment.
    fn attempt_url(&mut self) -> Url {
        let mut url = self.url.clone();
        if let Some(since) = self.since
            && self.last_id.is_empty()
        {
            let elapsed = match self.started {
                Some(started) => started.elapsed(),
                None => {
                    self.started = Some(Instant::now());
                    Duration::ZERO
                }
            };
            url.query_pairs_mut()
                .append_pair("since", &since_param(since, elapsed));
        }
        url
    }

    /// One attempt: a `200 text/event-stream`, or why not.
    async fn connect(&mut self) -> Result<reqwest::Response, Failure> {
        let url = self.attempt_url();
        let mut request = self
            .client
            .get(url)
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"))
            .header(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Ok(id) = HeaderValue::from_str(&self.last_id)
            && !self.last_id.is_empty()
        {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.map_err(|e| {
            // The network may come back; a certificate that is not trusted,
            // or a server that does not speak TLS, will not change by itself.
            match handshake_failure(&e) {
                Some(reason) => Failure::Refused(reason),
                None => Failure::Unavailable {
                    reason: transport_error(&e),
                    retry_after: None,
                },
            }
        })?;
        let status = response.status();
        if status == StatusCode::OK {
            return check_event_stream(response);
        }
        if status == StatusCode::NO_CONTENT {
            return Err(Failure::Done);
        }
        if retryable(status) {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                .map(Duration::from_secs);
            return Err(Failure::Unavailable {
                reason: refusal_reason(response).await,
                retry_after,
            });
        }
        Err(Failure::Refused(refusal_reason(response).await))
    }

    /// Prints the stream's events until it ends; `Ok` with why it ended, or
    /// `Err` with the exit status when stdout can take no more.
    async fn read(&mut self, response: reqwest::Response) -> Result<String, ExitCode> {
        let mut parser = SseParser::with_last_id(&self.last_id);
        let mut body = response.bytes_stream();
        let mut items = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(self.idle_timeout, body.next()).await {
                Err(_) => {
                    return Ok(format!(
                        "nothing received for {}",
                        humantime::format_duration(self.idle_timeout)
                    ));
                }
                Ok(None) => return Ok("the stream ended".to_owned()),
                Ok(Some(Err(e))) => return Ok(transport_error(&e)),
                Ok(Some(Ok(chunk))) => chunk,
            };
            parser.push(&chunk, &mut items);
            for item in items.drain(..) {
                self.handle(item)?;
            }
        }
    }

    fn handle(&mut self, item: Item) -> Result<(), ExitCode> {
        match item {
            Item::Retry(ms) => self.retry = Duration::from_millis(ms),
            Item::Id(id) => self.last_id = id,
            // What the stream is (its opening, a stopping server's answer):
            // its `id:` is where to resume, nothing to print.
            Item::Event(event) if event.event == "stream" => self.last_id = event.id,
            Item::Event(event) if event.event == "reset" => {
                notice(format_args!("{}", reset_notice(&event.data)));
                self.last_id = event.id;
            }
            Item::Event(event) => {
                match self.printer.print(&event) {
                    Ok(()) => {}
                    // The reader went away (`herald tail | head`): a normal end.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        return Err(ExitCode::SUCCESS);
                    }
                    Err(e) => {
                        notice(format_args!("cannot write to standard output: {e}"));
                        return Err(ExitCode::FAILURE);
                    }
                }
                self.last_id = event.id;
            }
        }
        Ok(())
    }
}

/// The `since=` value of an attempt made `elapsed` after the first: a time
/// as RFC 3339, a duration lengthened by `elapsed` (rounded up to the
/// millisecond, so that nothing at the start is missed).
fn since_param(since: Since, elapsed: Duration) -> String {
    match since {
        Since::At(time) => time
            .format(&Rfc3339)
            .expect("a time parsed from RFC 3339 formats as RFC 3339"),
        Since::Ago(ago) => {
            let elapsed = Duration::from_millis(elapsed.as_nanos().div_ceil(1_000_000) as u64);
            humantime::format_duration(ago + elapsed).to_string()
        }
    }
}

/// A `200` that is not an event stream (another service at that URL) is
/// not worth retrying.
fn check_event_stream(response: reqwest::Response) -> Result<reqwest::Response, Failure> {
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if content_type
        .split(';')
        .next()
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
    {
        Ok(response)
    } else {
        Err(Failure::Refused(format!(
            "{} is not an event stream (it answered 200 with content type {content_type:?}); is --url a herald server?",
            response.url()
        )))
    }
}

/// The wait before attempt `failures + 1`: the server's `retry:`, doubling
/// with each failure in a row, at most [`MAX_BACKOFF`] (unless `retry:`
/// itself is longer).
fn backoff(retry: Duration, failures: u32) -> Duration {
    let base = retry.max(MIN_DELAY);
    let doubled = base.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF).max(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_counts_a_duration_back_from_the_first_attempt() {
        let ago = Since::Ago(Duration::from_secs(600));
        assert_eq!(since_param(ago, Duration::ZERO), "10m");
        assert_eq!(
            since_param(ago, Duration::from_micros(61_500_001)),
            "11m 1s 501ms"
        );
        let at = crate::cli::args::parse_since("2026-11-23T09:00:00+01:00").unwrap();
        assert_eq!(
            since_param(at, Duration::from_secs(5)),
            "2026-11-23T09:00:00+01:00"
        );
    }

    #[test]
    fn backoff_starts_at_retry_doubles_and_stops_at_ten_seconds() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(backoff(ms(200), 1), ms(200));
        assert_eq!(backoff(ms(200), 2), ms(400));
        assert_eq!(backoff(ms(200), 4), ms(1600));
        assert_eq!(backoff(ms(200), 40), MAX_BACKOFF);
        assert_eq!(backoff(ms(0), 1), MIN_DELAY);
        assert_eq!(backoff(ms(30_000), 3), ms(30_000));
    }
}
