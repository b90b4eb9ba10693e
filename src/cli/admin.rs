//! `herald streams`, `herald revoke` and `herald explain`: the admin API from a terminal
//! (docs/ARCHITECTURE.md, "Streams you can name and steer"), over HTTP like
//! any other client.

use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;

use super::args::{ExplainArgs, RevokeArgs, StreamsArgs};
use super::{
    EXIT_REFUSED, EXIT_UNAVAILABLE, endpoint, http_client, notice, refusal_reason, retryable,
    transport_error,
};

pub async fn streams(args: StreamsArgs) -> ExitCode {
    let client = match http_client(&args.client, |c| c) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mut url = endpoint(&args.client.url, "v1/streams");
    {
        let mut query = url.query_pairs_mut();
        if let Some(subject) = &args.subject {
            query.append_pair("subject", subject);
        }
        if let Some(topic) = &args.topic {
            query.append_pair("topic", topic);
        }
        query.append_pair("state", if args.ended { "ended" } else { "open" });
        query.append_pair("limit", "1000");
    }
    let body = match answer(client.get(url)).await {
        Ok(body) => body,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(out, "{body}");
        return ExitCode::SUCCESS;
    }
    let streams = body["streams"].as_array().cloned().unwrap_or_default();
    for s in &streams {
        let text = |key: &str| s[key].as_str().unwrap_or("-").to_owned();
        let topics: Vec<&str> = s["topics"]
            .as_array()
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut line = format!(
            "{} {} {} {} {} {}",
            text("id"),
            text("handle"),
            text("subject"),
            s["instance_name"]
                .as_str()
                .or(s["instance"].as_str())
                .unwrap_or("-"),
            text("client_addr"),
            text("opened_at"),
        );
        if args.ended {
            line.push_str(&format!(" {} {}", text("ended_at"), text("end_reason")));
        }
        line.push(' ');
        line.push_str(&topics.join(","));
        let _ = writeln!(out, "{line}");
    }
    ExitCode::SUCCESS
}

pub async fn revoke(args: RevokeArgs) -> ExitCode {
    let client = match http_client(&args.client, |c| c) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mut url = endpoint(&args.client.url, "v1/subjects/");
    // The subject as one path segment, whatever it holds.
    url.path_segments_mut()
        .expect("an http URL has a path")
        .pop_if_empty()
        .push(&args.subject)
        .push("streams");
    match answer(client.delete(url)).await {
        Ok(body) => {
            println!(
                "revoked {}: its streams end everywhere; its tokens issued before {} are refused until {}",
                args.subject,
                body["revoked_at"].as_str().unwrap_or("now"),
                body["tokens_refused_until"]
                    .as_str()
                    .unwrap_or("the window passes"),
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub async fn explain(args: ExplainArgs) -> ExitCode {
    let client = match http_client(&args.client, |c| c) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mut url = endpoint(&args.client.url, "v1/events/");
    url.path_segments_mut()
        .expect("an http URL has a path")
        .pop_if_empty()
        .push(&args.id.to_string())
        .push("deliveries");
    url.query_pairs_mut().append_pair("subject", &args.subject);
    let body = match answer(client.get(url)).await {
        Ok(body) => body,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(out, "{body}");
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(out, "{}", body["answer"].as_str().unwrap_or("-"));
    let streams = body["streams"].as_array().cloned().unwrap_or_default();
    if !streams.is_empty() {
        let _ = writeln!(out, "\nStreams of {} around it:", args.subject);
    }
    for s in &streams {
        let _ = writeln!(out, "- {}", s["sentence"].as_str().unwrap_or("-"));
    }
    ExitCode::SUCCESS
}

/// The JSON of a successful answer, or the exit status after saying why.
async fn answer(request: reqwest::RequestBuilder) -> Result<Value, ExitCode> {
    let response = request.send().await.map_err(|e| {
        notice(format_args!("{}", transport_error(&e)));
        ExitCode::from(EXIT_UNAVAILABLE)
    })?;
    let status = response.status();
    if !status.is_success() {
        notice(format_args!("{}", refusal_reason(response).await));
        return Err(ExitCode::from(if retryable(status) {
            EXIT_UNAVAILABLE
        } else {
            EXIT_REFUSED
        }));
    }
    response.json().await.map_err(|e| {
        notice(format_args!("the answer is not JSON: {e}"));
        ExitCode::from(EXIT_REFUSED)
    })
}
