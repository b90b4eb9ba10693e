//! `herald publish TOPIC [DATA|-]`: one `POST /v1/events` (docs/ARCHITECTURE.md,
//! "Publish"), the stored envelope on stdout, and an exit status a script can
//! branch on (see [`super::EXIT_REFUSED`], [`super::EXIT_UNAVAILABLE`]).
//!
//! Data is sent exactly as typed when it is JSON (key order and number
//! spelling kept, as the server keeps them), and as a JSON string otherwise,
//! so `herald publish alerts "disk full"` needs no quoting gymnastics.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde_json::value::RawValue;

use super::args::PublishArgs;
use super::{
    EXIT_REFUSED, EXIT_UNAVAILABLE, endpoint, handshake_failure, http_client, notice,
    refusal_reason, retryable, transport_error,
};
use crate::event::compact_json;

/// Most bytes read from standard input; the server's own limit is far lower,
/// this only keeps a runaway pipe from filling memory.
const MAX_STDIN_BYTES: u64 = 64 * 1024 * 1024;

/// The request body: one event as the publish endpoint takes it.
#[derive(Serialize)]
struct EventOut<'a> {
    topic: &'a str,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    event_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

pub async fn run(args: PublishArgs) -> ExitCode {
    let client = match http_client(&args.client, |c| c.timeout(args.timeout)) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let data = match read_data(args.data.as_deref()) {
        Ok(data) => data,
        Err(e) => {
            notice(format_args!("cannot read standard input: {e}"));
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    let body = serde_json::to_string(&EventOut {
        topic: &args.topic,
        event_type: args.event_type.as_deref(),
        data: data.as_deref(),
    })
    .expect("an event with raw JSON data serializes");
    send(&client, &args, body).await
}

/// Posts the event and turns the answer into output and an exit status.
async fn send(client: &reqwest::Client, args: &PublishArgs, body: String) -> ExitCode {
    let mut request = client
        .post(endpoint(&args.client.url, "v1/events"))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body);
    if let Some(key) = &args.key {
        request = request.header("idempotency-key", key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) if let Some(reason) = handshake_failure(&e) => {
            // Nothing goes out before the handshake completes.
            notice(format_args!("{reason}; nothing was stored"));
            return ExitCode::from(EXIT_REFUSED);
        }
        Err(e) if e.is_connect() => {
            notice(format_args!(
                "{}; nothing was stored (is herald running there? set --url or HERALD_URL)",
                transport_error(&e)
            ));
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
        Err(e) => {
            notice(format_args!(
                "{}; the event may or may not be stored: publish again with the same --key to be sure",
                transport_error(&e)
            ));
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let status = response.status();
    if !status.is_success() {
        notice(format_args!("{}", refusal_reason(response).await));
        return ExitCode::from(if retryable(status) {
            EXIT_UNAVAILABLE
        } else {
            EXIT_REFUSED
        });
    }
    match response.text().await {
        Ok(stored) => {
            if status == StatusCode::OK && args.key.is_some() {
                notice(format_args!(
                    "already stored under this key; nothing new was stored"
                ));
            }
            // A reader that went away is no reason to hide that the event
            // is stored: the status still says so.
            let _ = writeln!(std::io::stdout().lock(), "{}", compact_json(stored.trim()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The event may well be stored: the answer was lost on the way.
            notice(format_args!(
                "{}; the event may or may not be stored: publish again with the same --key to be sure",
                transport_error(&e)
            ));
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// The event's data as JSON: from the argument, or from standard input for
/// `-` or when there is no argument and stdin is not a terminal. `None`
/// (no data, which the server stores as `null`) for empty input.
fn read_data(arg: Option<&str>) -> std::io::Result<Option<Box<RawValue>>> {
    let text = match arg {
        Some("-") => read_stdin()?,
        Some(text) => text.to_owned(),
        None if std::io::stdin().is_terminal() => return Ok(None),
        None => read_stdin()?,
    };
    Ok(data_from_text(&text))
}

fn read_stdin() -> std::io::Result<String> {
    let mut text = String::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_string(&mut text)?;
    if read as u64 > MAX_STDIN_BYTES {
        return Err(std::io::Error::other(format!(
            "more than {MAX_STDIN_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// JSON text as it is; any other text as a JSON string without its trailing
/// newlines (as shell command substitution drops them); nothing for empty
/// text.
fn data_from_text(text: &str) -> Option<Box<RawValue>> {
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return None;
    }
    let raw = match serde_json::from_str::<Box<RawValue>>(text) {
        Ok(json) => json,
        Err(_) => {
            let string = serde_json::to_string(text).expect("a string serializes");
            RawValue::from_string(string).expect("a serialized string is JSON")
        }
    };
    Some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Option<String> {
        data_from_text(text).map(|raw| raw.get().to_owned())
    }

    #[test]
    fn json_text_is_kept_exactly() {
        assert_eq!(
            data("{\"b\":1, \"a\":1.50}").as_deref(),
            Some("{\"b\":1, \"a\":1.50}")
        );
        assert_eq!(data("42\n").as_deref(), Some("42"));
        assert_eq!(data("\"quoted\"").as_deref(), Some("\"quoted\""));
        assert_eq!(data("null").as_deref(), Some("null"));
    }

    #[test]
    fn other_text_becomes_a_json_string_without_trailing_newlines() {
        assert_eq!(data("disk full").as_deref(), Some("\"disk full\""));
        assert_eq!(
            data("line 1\nline 2\n\n").as_deref(),
            Some("\"line 1\\nline 2\"")
        );
        assert_eq!(data("{not json").as_deref(), Some("\"{not json\""));
    }

    #[test]
    fn empty_text_is_no_data() {
        assert_eq!(data(""), None);
        assert_eq!(data("\n"), None);
        assert_eq!(data("  \r\n"), None);
    }

    #[test]
    fn the_body_has_only_what_was_given() {
        let raw = data_from_text("{\"x\":1}");
        let body = serde_json::to_string(&EventOut {
            topic: "a:b",
            event_type: None,
            data: raw.as_deref(),
        })
        .unwrap();
        assert_eq!(body, "{\"topic\":\"a:b\",\"data\":{\"x\":1}}");
    }
}
