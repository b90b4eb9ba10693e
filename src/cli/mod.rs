//! The terminal client beside the server in the same binary (docs/ARCHITECTURE.md,
//! "Configuration"): `herald tail` follows a stream, `herald publish` sends
//! one event, `herald streams` and `herald revoke` use the admin API. Both talk to a running herald over its public HTTP API only,
//! like any other client. Their grammar, and the whole command line's
//! ([`Cli`]), is in [`args`].
//!
//! Exit statuses are part of the interface, for shell scripts: see
//! [`EXIT_REFUSED`], [`EXIT_USAGE`], [`EXIT_UNAVAILABLE`].

use std::io::Write;
use std::process::ExitCode;

use reqwest::Url;
use serde::Deserialize;

use args::ClientArgs;

mod admin;
pub mod args;
mod print;
pub mod publish;
pub mod sse;
pub mod tail;
pub mod tls;
mod token;

pub use args::{Cli, Command};

/// The server refused the request (a 4xx with its reason printed), the TLS
/// handshake failed (the server's certificate is not trusted, it does not
/// speak TLS), or the input could not be read. Retrying the same request
/// will not help.
pub const EXIT_REFUSED: u8 = 1;
/// A usage error: clap's own (an unknown flag, a bad value), or a
/// `--ca-cert` file that cannot be used.
pub const EXIT_USAGE: u8 = 2;
/// `herald publish` could not reach the server, or the server could not
/// store the event now (timeout, 429, 5xx). Retrying with the same `--key`
/// is safe.
pub const EXIT_UNAVAILABLE: u8 = 3;

/// Runs a client command to its end on a runtime of its own (one thread is
/// plenty for one connection).
pub fn main(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            notice(format_args!("cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match command {
            Command::Tail(args) => tail::run(args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Token(args) => token::run(&args),
            Command::Streams(args) => admin::streams(args).await,
            Command::Revoke(args) => admin::revoke(args).await,
            Command::Explain(args) => admin::explain(args).await,
        }
    })
}

/// The HTTP client of a command: TLS as [`tls`] sets it up, then whatever
/// `adjust` adds.
///
/// # Errors
/// The exit status, after telling why on stderr.
pub(crate) fn http_client(
    args: &ClientArgs,
    adjust: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client, ExitCode> {
    let tls = tls::client_config(args.ca_cert.as_deref()).map_err(|reason| {
        notice(format_args!("{reason}"));
        ExitCode::from(EXIT_USAGE)
    })?;
    let mut builder = reqwest::Client::builder().tls_backend_preconfigured(tls);
    if let Some(token) = &args.token {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(
                |_| {
                    notice(format_args!(
                        "the token is not something a header can carry"
                    ));
                    ExitCode::from(EXIT_USAGE)
                },
            )?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    adjust(builder).build().map_err(|e| {
        notice(format_args!("cannot start an HTTP client: {e}"));
        ExitCode::from(EXIT_REFUSED)
    })
}

/// Why a failed request's TLS handshake failed, in one line with what to
/// do about it; `None` when something other than TLS failed.
pub(crate) fn handshake_failure(e: &reqwest::Error) -> Option<String> {
    let tls = tls::handshake_error(e)?;
    let server = e.url().map_or_else(
        || "the server".to_owned(),
        |url| {
            let host = url.host_str().unwrap_or_default();
            match url.port_or_known_default() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            }
        },
    );
    let hint = match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            " (if a private CA signed its certificate, pass that CA with --ca-cert or HERALD_CA_CERT)"
        }
        rustls::Error::InvalidMessage(_) => " (does it speak TLS on that port?)",
        _ => "",
    };
    Some(format!("TLS handshake with {server} failed: {tls}{hint}"))
}

/// One line on standard error, prefixed like every message of the binary.
pub(crate) fn notice(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "herald: {message}");
}

/// `base` joined with an API path, keeping any path prefix of `base`
/// (`http://proxy/herald` + `v1/events` = `http://proxy/herald/v1/events`).
pub(crate) fn endpoint(base: &Url, path: &str) -> Url {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let with_slash = format!("{}/", base.path());
        base.set_path(&with_slash);
    }
    base.set_query(None);
    base.join(path).expect("a relative path joins any http URL")
}

/// Statuses that mean "not now" rather than "not like this": the same
/// request may succeed later.
pub(crate) fn retryable(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode;
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// The members of an RFC 9457 problem that the client shows.
#[derive(Deserialize)]
struct Problem {
    detail: Option<String>,
    title: Option<String>,
}

/// What a refusal says, for `herald: <reason>`: the problem's `detail`, or
/// failing that the status and the start of whatever body came.
pub(crate) async fn refusal_reason(response: reqwest::Response) -> String {
    let status = response.status();
    let url = response.url().clone();
    let body = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Problem>(&body) {
        Ok(Problem {
            detail: Some(detail),
            ..
        }) => detail,
        Ok(Problem {
            title: Some(title), ..
        }) => format!("{url} answered {}: {title}", status.as_u16()),
        _ => {
            let start: String = body.trim().chars().take(200).collect();
            let start: String = start
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            if start.is_empty() {
                format!("{url} answered {status}")
            } else {
                format!("{url} answered {status}: {start}")
            }
        }
    }
}

/// A transport error in one line: what was tried and the innermost cause
/// (`Connection refused (os error 111)` rather than reqwest's outer layers).
pub(crate) fn transport_error(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let url = e.url().map_or_else(
        || "the server".to_owned(),
        |url| without_query(url).to_string(),
    );
    if e.is_connect() {
        format!("cannot connect to {url}: {cause}")
    } else if e.is_timeout() {
        format!("no answer from {url} in time")
    } else {
        format!("{url}: {cause}")
    }
}

fn without_query(url: &Url) -> Url {
    let mut url = url.clone();
    url.set_query(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keeps_a_path_prefix() {
        let join = |base: &str| endpoint(&Url::parse(base).unwrap(), "v1/events").to_string();
        assert_eq!(join("http://h:1"), "http://h:1/v1/events");
        assert_eq!(join("http://h:1/"), "http://h:1/v1/events");
        assert_eq!(join("http://h/herald"), "http://h/herald/v1/events");
        assert_eq!(join("http://h/herald/?x=1"), "http://h/herald/v1/events");
    }
}
