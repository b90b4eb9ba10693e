//! The server's configuration: every setting is a flag and an environment
//! variable (docs/ARCHITECTURE.md, "Configuration"). The doc comment of each field is
//! its `--help` text; the README's table lists the same.
//!
//! The whole command line, with the terminal client's commands beside these
//! flags, is [`crate::cli::Cli`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, ValueEnum};

/// The local PostgreSQL, as installed on a fresh machine of this kind.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/herald";

/// The server's settings.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version, about)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PostgreSQL to keep the event log in; the database is created if missing.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Interval of `: ping` comments on an idle stream.
    #[arg(long, env = "HERALD_HEARTBEAT", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// The `retry:` hint sent at the start of every stream.
    #[arg(long, env = "HERALD_RETRY", default_value = "3s", value_parser = parse_duration)]
    pub retry: Duration,

    /// This instance's name, for PostgreSQL (`application_name` is
    /// `herald/<name>` in `pg_stat_activity`) and the logs; `herald` alone
    /// when unset. A pod or host name is a good one.
    #[arg(long, env = "HERALD_INSTANCE_NAME", value_name = "NAME")]
    pub instance_name: Option<String>,

    /// Log line format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// OpenTelemetry collector to export spans to, over OTLP/HTTP with
    /// protobuf: a base URL such as `http://127.0.0.1:4318`, to which
    /// `/v1/traces` is appended. Export is off unless this, or the standard
    /// OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
    /// is set; this wins over them.
    #[arg(long, env = "HERALD_OTLP_ENDPOINT", value_name = "URL", value_parser = parse_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// The base URL the other instances on the same database reach this one
    /// at, such as `http://10.0.0.5:8080`: whichever instance commits for
    /// the cluster is sent the others' publish requests there (README,
    /// "Several instances"). By default `http://` and the listen address,
    /// or, when that is `0.0.0.0` or `::`, the address PostgreSQL sees this
    /// instance connect from, with the listen port.
    #[arg(long, env = "HERALD_ADVERTISE_URL", value_name = "URL", value_parser = parse_advertise_url)]
    pub advertise_url: Option<String>,

    /// Window over which a stopping instance ends its open streams.
    #[arg(long, env = "HERALD_DRAIN", default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Recent events kept in memory to serve resumes without a query.
    #[arg(long, env = "HERALD_RING_SIZE", default_value_t = 65_536)]
    pub ring_size: usize,

    /// Client connections held at most; 0 derives it from the file limit
    /// (raised to its hard limit at start) less a reserve for PostgreSQL,
    /// health checks and scrapes. Beyond it a request gets 503
    /// problem+json with Retry-After, but /healthz, /readyz and /metrics
    /// are still answered.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Frames a subscriber may have queued before it counts as too slow and
    /// its stream is ended.
    #[arg(long, env = "HERALD_SUBSCRIBER_QUEUE", default_value_t = 4096)]
    pub subscriber_queue: usize,

    /// A stream whose client takes no bytes for this long, while there are
    /// some to send, is ended (its reconnect replays what it missed); so is
    /// any connection that stops reading.
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Largest `data` of one event, in bytes of compact JSON.
    #[arg(long, env = "HERALD_MAX_DATA_BYTES", default_value_t = 64 * 1024)]
    pub max_data_bytes: usize,

    /// Largest publish request body, in bytes.
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Time a client has to send a whole publish request body; slower
    /// bodies are answered 408 and their connection closed.
    #[arg(long, env = "HERALD_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Most events in one batch publish.
    #[arg(long, env = "HERALD_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,

    /// How often the listener reads the log even without a notification, so a
    /// lost NOTIFY delays delivery by at most this much.
    #[arg(long, env = "HERALD_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Silence after which the listener probes its LISTEN connection with a
    /// notification of its own; twice this without an answer and it reconnects.
    #[arg(long, env = "HERALD_LISTENER_PROBE", default_value = "5s", value_parser = parse_duration)]
    pub listener_probe: Duration,

    /// Connections in the PostgreSQL pool (at least 4: the committer and the
    /// listener keep one each).
    #[arg(long, env = "HERALD_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,

    /// How long a request waits for a pool connection, and an append for the
    /// log's lock or a statement, before answering 503.
    #[arg(long, env = "HERALD_DB_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub db_timeout: Duration,

    /// Events older than this are pruned from the log (`7d`, `12h`, `2s`);
    /// `0` keeps them, whatever their age. Checked every tenth of it,
    /// between once a second and once every 30 s.
    #[arg(long, env = "HERALD_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,

    /// Most events the log keeps: older ones beyond this many are pruned
    /// too, whatever their age. `0` means no cap.
    #[arg(long, env = "HERALD_RETENTION_COUNT", default_value_t = 0)]
    pub retention_count: u64,

    /// An idempotency key is honoured for at least this long after its
    /// event's commit, even if retention prunes the event sooner (the key
    /// and its event are kept aside until then).
    #[arg(long, env = "HERALD_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_window: Duration,

    /// Browser origins (such as `https://app.example.com`) that may publish
    /// and subscribe from their pages, with cookies; comma-separated. Empty
    /// means same-origin only. A wildcard is refused: with credentials it
    /// would let any site read the streams.
    #[arg(long, env = "HERALD_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// How long an instance's lease in the stream registry lasts; it is
    /// renewed every third of it. Streams of an instance whose lease passed
    /// (killed, cut off) are listed as ended (`instance_lost`).
    #[arg(long, env = "HERALD_LEASE", default_value = "10s", value_parser = parse_duration)]
    pub lease: Duration,

    /// Most topic filters one stream may hold (on the URL or set with
    /// `PUT /v1/streams/{handle}`).
    #[arg(long, env = "HERALD_MAX_TOPICS_PER_STREAM", default_value_t = 64)]
    pub max_topics_per_stream: usize,

    /// How long a revocation (`DELETE /v1/subjects/{sub}/streams`) refuses
    /// the subject's tokens issued before it: make it your longest token
    /// lifetime.
    #[arg(long, env = "HERALD_REVOCATION_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub revocation_window: Duration,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub limits: LimitConfig,
}

/// The HS256 secret, from a file or as a value. The server verifies tokens
/// with it and `herald token` signs them with it, so both read it from the
/// same flags and variables.
#[derive(Debug, Clone, Default, Args)]
pub struct JwtSecret {
    /// File holding the HS256 secret tokens are signed with (trailing
    /// newlines are ignored).
    #[arg(long, env = "HERALD_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// The HS256 secret itself (prefer --jwt-secret-file: a flag shows in
    /// the process list).
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub jwt_secret: Option<Secret>,
}

/// A secret from its flag or its file (`None` when neither is given).
/// `name` is the flag's name without dashes (`jwt-secret`); the file's
/// flag adds `-file`, and the variables are `HERALD_` and the name in
/// capitals.
///
/// Both given is refused, whether as flags or as variables, with a message
/// that names all four: the two could hold different secrets, and a shell
/// that still exports one from an earlier try is the usual cause, so
/// neither is picked in silence.
///
/// # Errors
/// Both given, or a file that cannot be read or is empty.
fn read_secret(
    name: &str,
    value: Option<&Secret>,
    file: Option<&Path>,
) -> anyhow::Result<Option<String>> {
    match (value, file) {
        (Some(_), Some(_)) => {
            let var = format!("HERALD_{}", name.to_uppercase().replace('-', "_"));
            bail!(
                "--{name} (or {var}) and --{name}-file (or {var}_FILE) are both set; \
                 give the secret one way: unset {var} or {var}_FILE in this shell, or drop one flag"
            )
        }
        (Some(secret), None) => Ok(Some(secret.expose().to_owned())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--{name}-file: cannot read {}", path.display()))?;
            let secret = text.trim_end_matches(['\n', '\r']).to_owned();
            if secret.is_empty() {
                bail!("--{name}-file: {} is empty", path.display());
            }
            Ok(Some(secret))
        }
        (None, None) => Ok(None),
    }
}

impl AuthConfig {
    /// The previous HS256 secret, still accepted during a rotation.
    ///
    /// # Errors
    /// As [`JwtSecret::read`].
    pub fn previous_secret(&self) -> anyhow::Result<Option<String>> {
        read_secret(
            "jwt-previous-secret",
            self.jwt_previous_secret.as_ref(),
            self.jwt_previous_secret_file.as_deref(),
        )
    }
}

impl JwtSecret {
    /// The secret, from the value or the file (not both); `None` when
    /// neither is given.
    ///
    /// # Errors
    /// Both given, or a file that cannot be read or is empty.
    pub fn read(&self) -> anyhow::Result<Option<String>> {
        read_secret(
            "jwt-secret",
            self.jwt_secret.as_ref(),
            self.jwt_secret_file.as_deref(),
        )
    }
}

/// Who may read and publish: JWT verification (docs/ARCHITECTURE.md, "Configuration").
/// With no key configured herald runs anonymous, and then only on a
/// loopback address unless `--allow-anonymous` says so on purpose.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Tokens")]
pub struct AuthConfig {
    #[command(flatten)]
    pub secret: JwtSecret,

    /// File holding the previous HS256 secret, still accepted while tokens
    /// signed with it live out their time (rotation).
    #[arg(long, env = "HERALD_JWT_PREVIOUS_SECRET_FILE", value_name = "FILE")]
    pub jwt_previous_secret_file: Option<PathBuf>,

    /// The previous HS256 secret itself.
    #[arg(
        long,
        env = "HERALD_JWT_PREVIOUS_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub jwt_previous_secret: Option<Secret>,

    /// PEM public key tokens are verified with, for --jwt-algorithm RS256,
    /// ES256 or EdDSA.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY_FILE", value_name = "FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// The one algorithm tokens must use; never read from the token itself.
    /// HS256 goes with a secret, the others with a public key.
    #[arg(long, env = "HERALD_JWT_ALGORITHM", value_enum)]
    pub jwt_algorithm: Option<JwtAlgorithm>,

    /// Audience tokens must name in `aud`; when set, `aud` is required.
    #[arg(long, env = "HERALD_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp` and `nbf`, at most 5 minutes.
    #[arg(long, env = "HERALD_JWT_LEEWAY", default_value = "5s", value_parser = parse_leeway)]
    pub jwt_leeway: Duration,

    /// How long before a stream's token expires the stream carries an
    /// `auth-expiring` event, so a page can refresh its cookie in time.
    #[arg(long, env = "HERALD_TOKEN_EXPIRY_WARNING", default_value = "60s", value_parser = parse_duration)]
    pub token_expiry_warning: Duration,

    /// Cookie a browser's token travels in.
    #[arg(
        long,
        env = "HERALD_AUTH_COOKIE",
        default_value = "herald_token",
        value_name = "NAME"
    )]
    pub auth_cookie: String,

    /// Serve without tokens on a non-loopback address, on purpose: anyone
    /// who can reach herald may then read every topic and publish anywhere.
    #[arg(long, env = "HERALD_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
}

/// Token algorithms herald verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
}

/// Caps on streams and publishes (`0` means no cap).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Caps")]
pub struct LimitConfig {
    /// Open streams one token subject may hold across all instances (every
    /// tab of a browser is one); a new stream over it ends the subject's
    /// oldest (`event: replaced`). Not applied to anonymous clients, who
    /// have no subject.
    #[arg(long, env = "HERALD_MAX_STREAMS_PER_SUBJECT", default_value_t = 64)]
    pub max_streams_per_subject: usize,

    /// Open streams one client address may hold across all instances, the
    /// oldest ended as for subjects. Off by default: behind a
    /// proxy every client has the proxy's address unless the proxy is
    /// listed in --trusted-proxies; and one office's NAT is one address.
    #[arg(long, env = "HERALD_MAX_STREAMS_PER_IP", default_value_t = 0)]
    pub max_streams_per_ip: usize,

    /// Events one subject may publish per second, with a burst of as many;
    /// counted by each instance on its own.
    #[arg(long, env = "HERALD_PUBLISH_RATE_PER_SUBJECT", default_value_t = 1000)]
    pub publish_rate_per_subject: u32,

    /// Addresses (or CIDR ranges) of proxies whose `X-Forwarded-For` is
    /// believed for the client address; comma-separated. Without them the
    /// client address is the connection's peer.
    #[arg(
        long,
        env = "HERALD_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A secret from a flag or the environment: never printed, not even by
/// `{:?}` of the configuration.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the secret is empty".to_owned());
        }
        Ok(Self(s.to_owned()))
    }
}

/// A leeway of at most 5 minutes.
fn parse_leeway(s: &str) -> Result<Duration, String> {
    let leeway = parse_duration(s)?;
    if leeway > Duration::from_secs(300) {
        return Err("at most 5m: a larger leeway lets expired tokens in".to_owned());
    }
    Ok(leeway)
}

/// Accepts `scheme://host[:port]` with nothing after it.
///
/// # Errors
/// A message naming the expected form.
pub fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?} is not an origin: expected http(s)://host[:port]"))?;
    let ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not an origin: expected http(s)://host[:port]"
        ))
    }
}

/// Accepts an `http://` or `https://` URL with a host: the collector's
/// address, a path prefix allowed.
///
/// # Errors
/// A message naming the expected form.
pub fn parse_endpoint(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or_default();
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || s.contains(char::is_whitespace) {
        return Err(format!(
            "{s:?} is not an OTLP/HTTP endpoint: expected http(s)://host[:port], such as http://127.0.0.1:4318"
        ));
    }
    Ok(s.to_owned())
}

/// An `--advertise-url`: `http(s)://host[:port]`, without a path.
///
/// # Errors
/// Anything else, with an example.
pub fn parse_advertise_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or_default();
    if rest.is_empty() || rest.contains(['/', '?', '#']) || s.contains(char::is_whitespace) {
        return Err(format!(
            "{s:?} is not a base URL: expected http(s)://host[:port], such as http://10.0.0.5:8080"
        ));
    }
    Ok(s.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Parses `15s`, `500ms`, `1m30s`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}: expected a duration such as 15s, 500ms or 1m"))
}

impl Config {
    /// The configuration of `herald` started with no flags (environment
    /// variables still apply); tests adjust fields from here.
    pub fn defaults() -> Self {
        Self::parse_from(["herald"])
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_advertise_url, parse_endpoint};

    #[test]
    fn an_advertise_url_is_an_http_base_url() {
        assert_eq!(
            parse_advertise_url("http://10.0.0.5:8080/").unwrap(),
            "http://10.0.0.5:8080"
        );
        assert!(parse_advertise_url("https://herald-0.herald:8080").is_ok());
        for bad in [
            "10.0.0.5:8080",
            "http://",
            "http://h/v1",
            "ftp://h",
            "http://h x",
        ] {
            assert!(parse_advertise_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_otlp_endpoint_is_an_http_url_with_a_host() {
        for good in ["http://127.0.0.1:4318", "https://collector.example/otlp"] {
            assert_eq!(parse_endpoint(good).as_deref(), Ok(good));
        }
        for bad in [
            "127.0.0.1:4318",
            "http://",
            "grpc://c:4317",
            "http://a b",
            "ftp://c",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?}");
        }
    }
}
