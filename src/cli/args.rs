//! The command line: [`Cli`] is all of it, the server's flags ([`Config`])
//! flattened in beside the terminal client's commands, whose grammar is the
//! rest of this file. The doc comment of each field is its `--help` text;
//! the README's "Terminal client" section and configuration table say the
//! same.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use reqwest::Url;

use crate::config::{Config, parse_duration};

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
}

/// Where the client finds the server.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The herald server (plain HTTP; a path prefix such as
    /// `http://proxy/herald/` is kept).
    #[arg(long, env = "HERALD_URL", default_value = DEFAULT_URL, value_parser = parse_url)]
    pub url: Url,
}

/// `herald tail [TOPIC…]`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Output: one line per event, `#ID TIME TOPIC TYPE DATA` (coloured when standard
output is a terminal and NO_COLOR is unset), or with --json each event's JSON
envelope exactly as the stream carries it. Notices (connected, connection lost,
reconnected, reset) go to standard error only.

After a dropped connection tail reconnects with Last-Event-ID set to the last
id it received, after the server's `retry:` delay (backing off up to 10s while
the server cannot be reached), so no event is missed or printed twice.

Exit status: 0 after Ctrl-C or SIGTERM (or when standard output is closed),
1 when the server refuses the request (the reason is printed), 2 for a usage
error. Connection errors and 5xx answers are retried, never fatal.")]
pub struct TailArgs {
    /// Topic filters: an exact topic, or a prefix ending in `*`
    /// (`incident:*`); none means every topic.
    #[arg(value_name = "TOPIC")]
    pub topics: Vec<String>,

    /// Print each event's JSON envelope, one per line, and nothing else.
    #[arg(long)]
    pub json: bool,

    /// Reconnect when nothing, not even a `: ping`, arrived for this long
    /// (keep it above the server's heartbeat).
    #[arg(long, env = "HERALD_TAIL_IDLE_TIMEOUT", default_value = "45s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    #[command(flatten)]
    pub client: ClientArgs,
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
server or unreadable input (the reason is printed), 2 usage error, 3 the server
could not be reached or could not store the event now (connection failure,
timeout, 429, 5xx): try again later, with the same --key to be sure the event
is stored once."
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

/// Parses the client's `--url`: an `http://` URL with a host.
///
/// # Errors
/// A message saying what is wrong, for clap to show.
pub fn parse_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{e}: expected a URL such as {DEFAULT_URL}"))?;
    match url.scheme() {
        "http" if url.has_host() => Ok(url),
        "http" => Err(format!("no host in it: expected a URL such as {DEFAULT_URL}")),
        "https" => Err(
            "https is not supported by this client (it has no TLS); use the server's plain HTTP address"
                .to_owned(),
        ),
        other => Err(format!("scheme {other:?}: expected a URL such as {DEFAULT_URL}")),
    }
}

/// An idempotency key must fit in an HTTP header; the server checks the rest.
fn parse_header_key(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err("expected visible ASCII characters (no spaces)".to_owned())
    }
}
