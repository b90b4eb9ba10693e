//! The command line: [`Cli`] is all of it, the server's flags ([`Config`])
//! flattened in beside the terminal client's commands, whose grammar is the
//! rest of this file. The doc comment of each field is its `--help` text;
//! the README's "Terminal client" section and configuration table say the
//! same.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use reqwest::Url;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{Config, JwtSecret, Secret, parse_duration};

/// Where the terminal client looks for herald: the server's default address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// herald: Server-Sent Events backed by a PostgreSQL event log.
///
/// With no command, runs the server, configured by the options below. `herald
/// tail` and `herald publish` are a terminal client for a running server.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "herald",
    version,
    args_conflicts_with_subcommands = true,
    override_usage = "herald [OPTIONS]\n       herald <COMMAND>"
)]
pub struct Cli {
    #[command(flatten)]
    pub server: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The client commands beside the server.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print the events of a stream as they arrive; resume after a drop.
    Tail(TailArgs),
    /// Publish one event and print it as stored.
    Publish(PublishArgs),
    /// Mint a token from the configured HS256 secret (development and
    /// operations).
    Token(TokenArgs),
    /// List streams across every instance (the admin API).
    Streams(StreamsArgs),
    /// End every stream of a subject, everywhere, and refuse its tokens
    /// issued before now (the admin API).
    Revoke(RevokeArgs),
    /// Say whether a subject got an event, and if not, why (the admin API).
    Explain(ExplainArgs),
}

/// `herald streams [--subject S] [--topic T] [--ended] [--json]`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Lists streams from the stream registry (GET /v1/streams), newest first: open
ones, or with --ended the ones that ended and why. One line per stream: its id,
handle (- for an unnamed one), subject, instance, client address, when it
opened, and its topics; with --json the API's JSON. Needs a token with
\"herald\": {\"admin\": true} (herald token --admin), except against an
anonymous herald.

Exit status: 0 listed, 1 refused by the server, 3 the server could not be
reached.")]
pub struct StreamsArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Only this subject's streams.
    #[arg(long)]
    pub subject: Option<String>,

    /// Only streams that would get an event of this topic.
    #[arg(long)]
    pub topic: Option<String>,

    /// The streams that ended, and why, rather than the open ones.
    #[arg(long)]
    pub ended: bool,

    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// `herald revoke SUBJECT`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
DELETE /v1/subjects/SUBJECT/streams: every stream of the subject ends on every
instance within a second (event: revoked), and its tokens issued before now, or
without iat, are refused for the server's --revocation-window. Needs an admin
token (herald token --admin), except against an anonymous herald.

Exit status: 0 revoked, 1 refused by the server, 3 the server could not be
reached.")]
pub struct RevokeArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// The token subject (`sub`) to revoke.
    pub subject: String,
}

/// `herald explain ID --subject S [--json]`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Asks GET /v1/events/ID/deliveries?subject=S and prints the answer in sentences:
first whether S got the event and why (or why not), then one line per stream of
S around it: whether its topics matched, whether the event was written to it
(live, or on resume after a reconnect), or why not (it ended before, and why;
it started after without resuming; a reset after the event was pruned). With
--json the API's JSON. Needs an admin token (herald token --admin), except
against an anonymous herald.

Exit status: 0 answered, 1 refused by the server (404: no such event), 3 the
server could not be reached.")]
pub struct ExplainArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// The event's id.
    pub id: u64,

    /// The token subject (`sub`) whose delivery to explain.
    #[arg(long)]
    pub subject: String,

    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where the client finds the server.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The herald server, `http://` or `https://` (a path prefix such as
    /// `https://proxy/herald/` is kept).
    #[arg(long, env = "HERALD_URL", default_value = DEFAULT_URL, value_parser = parse_url)]
    pub url: Url,

    /// A CA certificate to trust for `https://` besides the built-in
    /// (Mozilla's) roots, for a server whose certificate a private CA
    /// signed: a PEM file, which may hold several.
    #[arg(long, env = "HERALD_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// A token to send as `Authorization: Bearer` (see `herald token`).
    #[arg(
        long,
        env = "HERALD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Secret>,
}

/// `herald token --subject S [--subscribe F…] [--publish F…]`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Prints one signed JWT (HS256) on standard output, with the claims herald reads:
`sub`, `exp` (now plus --ttl), `aud` when --audience is given, and the grants
claim `herald: {\"subscribe\": [...], \"publish\": [...]}`. Filters are those a
stream takes (`user:alice:*`, `alerts`), and `{sub}` in one stands for the
subject. The secret is the server's: --jwt-secret-file or HERALD_JWT_SECRET_FILE
(or --jwt-secret / HERALD_JWT_SECRET).

Examples:
  herald token --subject alice --subscribe 'user:{sub}:*' --ttl 1h
  herald token --subject billing-service --publish '*' --ttl 30d")]
pub struct TokenArgs {
    /// The token's subject (`sub`): a user or a service.
    #[arg(long)]
    pub subject: String,

    /// A topic filter the bearer may subscribe to; repeatable.
    #[arg(long = "subscribe", value_name = "FILTER")]
    pub subscribe: Vec<String>,

    /// A topic filter the bearer may publish to; repeatable.
    #[arg(long = "publish", value_name = "FILTER")]
    pub publish: Vec<String>,

    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,

    /// Grant the admin API: list and end streams, revoke subjects.
    #[arg(long)]
    pub admin: bool,

    /// The audience (`aud`) to put in the token.
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub audience: Option<String>,

    #[command(flatten)]
    pub secret: JwtSecret,
}

/// `herald tail [TOPIC…]`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Start: live from now; with --since, the events committed since then first;
with --last-event-id, the events after that id first.

Output: one line per event, `#ID TIME TOPIC TYPE DATA` (coloured when standard
output is a terminal and NO_COLOR is unset), or with --json each event's JSON
envelope exactly as the stream carries it. Notices (connected, connection lost,
reconnected, reset) go to standard error only.

After a dropped connection tail reconnects with Last-Event-ID set to the last
id it received (or, while none has come, from where --since or
--last-event-id started), after the server's `retry:` delay (backing off up to 10s while
the server cannot be reached), so no event is missed or printed twice.

Exit status: 0 after Ctrl-C or SIGTERM (or when standard output is closed),
1 when the server refuses the request or the TLS handshake fails (the reason
is printed), 2 for a usage error or a --ca-cert file that cannot be used.
Connection errors and 5xx answers are retried, never fatal.")]
pub struct TailArgs {
    /// Topic filters: an exact topic, or a prefix ending in `*`
    /// (`incident:*`); none means every topic.
    #[arg(value_name = "TOPIC")]
    pub topics: Vec<String>,

    /// Print each event's JSON envelope, one per line, and nothing else.
    #[arg(long)]
    pub json: bool,

    /// Start with the events committed since then: a duration back from now
    /// (`10m`, `1h30m`) or an RFC 3339 time (`2026-11-23T08:00:00Z`).
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since, conflicts_with = "last_event_id")]
    pub since: Option<Since>,

    /// Start with the events after this id (`0`: from the oldest event the
    /// log holds), as a reconnect with `Last-Event-ID` would.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(i64).range(0..))]
    pub last_event_id: Option<i64>,

    /// Reconnect when nothing, not even a `: ping`, arrived for this long
    /// (keep it above the server's heartbeat).
    #[arg(long, env = "HERALD_TAIL_IDLE_TIMEOUT", default_value = "45s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// Where `herald tail --since` starts, as the stream's `since=` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// This long before the first connection.
    Ago(Duration),
    /// At this time.
    At(OffsetDateTime),
}

/// `herald publish TOPIC [DATA|-]`.
#[derive(Debug, Clone, Args)]
#[command(
    allow_negative_numbers = true,
    after_help = "\
DATA is JSON text (`{\"status\":\"open\"}`, `42`, `null`); anything that is not
valid JSON is sent as a JSON string, so `herald publish alerts \"disk full\"`
works. `-`, or no DATA while standard input is not a terminal, reads standard
input by the same rule (trailing newlines dropped). Empty input sends no data
(null). With no DATA and standard input a terminal, the event has no data.

Output: the stored event's JSON envelope, one line, on standard output.

Exit status: 0 stored (or already stored under --key), 1 refused by the
server, the TLS handshake failed (nothing was sent) or unreadable input (the
reason is printed), 2 usage error or a --ca-cert file that cannot be used,
3 the server could not be reached or could not store the event now
(connection failure, timeout, 429, 5xx): try again later, with the same --key
to be sure the event is stored once."
)]
pub struct PublishArgs {
    /// The event's topic, such as `incident:inc-123`.
    pub topic: String,

    /// The event's data: JSON, other text (sent as a JSON string), or `-`
    /// for standard input.
    #[arg(value_name = "DATA|-")]
    pub data: Option<String>,

    /// The event type (the SSE `event:` name); `message` if left out.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,

    /// Idempotency key: publishing again with the same key stores nothing
    /// and prints the event first stored under it.
    #[arg(long, value_name = "KEY", value_parser = parse_header_key)]
    pub key: Option<String>,

    /// Give up on the request after this long (exit status 3).
    #[arg(long, env = "HERALD_PUBLISH_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// Parses the client's `--url`: an `http://` or `https://` URL with a host.
///
/// # Errors
/// A message saying what is wrong, for clap to show.
pub fn parse_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{e}: expected a URL such as {DEFAULT_URL}"))?;
    match url.scheme() {
        "http" | "https" if url.has_host() => Ok(url),
        "http" | "https" => Err(format!(
            "no host in it: expected a URL such as {DEFAULT_URL}"
        )),
        other => Err(format!(
            "scheme {other:?}: expected a URL such as {DEFAULT_URL}"
        )),
    }
}

/// Parses `--since` as the server parses `since=`: a duration back from now
/// or an RFC 3339 time; a duration reaching before the calendar's start is
/// refused here rather than sent.
///
/// # Errors
/// A message naming the accepted forms, for clap to show.
pub fn parse_since(s: &str) -> Result<Since, String> {
    let s = s.trim();
    if let Ok(ago) = humantime::parse_duration(s) {
        let representable = time::Duration::try_from(ago)
            .ok()
            .and_then(|ago| OffsetDateTime::now_utc().checked_sub(ago))
            .is_some();
        return if representable {
            Ok(Since::Ago(ago))
        } else {
            Err("too far back: give a shorter duration or a time".to_owned())
        };
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(Since::At)
        .map_err(|_| {
            "expected a duration such as 10m or an RFC 3339 time such as 2026-11-23T08:00:00Z"
                .to_owned()
        })
}

/// An idempotency key must fit in an HTTP header; the server checks the rest.
fn parse_header_key(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err("expected visible ASCII characters (no spaces)".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_an_rfc3339_time() {
        assert_eq!(
            parse_since("1h30m"),
            Ok(Since::Ago(Duration::from_secs(5400)))
        );
        assert_eq!(
            parse_since(" 2026-11-23T08:00:00Z "),
            Ok(Since::At(
                OffsetDateTime::from_unix_timestamp(1_795_420_800).unwrap()
            ))
        );
        for bad in ["yesterday", "10", "2026-11-23", "2026-11-23 08:00:00", ""] {
            assert!(
                parse_since(bad).unwrap_err().starts_with("expected"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn since_refuses_a_duration_before_the_calendar_starts() {
        assert!(parse_since("5000y").is_ok());
        assert_eq!(
            parse_since("100000y"),
            Err("too far back: give a shorter duration or a time".to_owned())
        );
    }
}
