//! The README's snippet for `reqwest-eventsource`, compiled and run as
//! written: between the markers is the README's block, byte for byte
//! (`readme_snippets_are_the_code_the_tests_run` checks). It runs in the
//! test process, as a task that writes what it receives in the lines the
//! Node and Python harnesses print.

// reqwest-eventsource builds on reqwest 0.12 (the tests' own `reqwest` is
// 0.13): the snippet's `reqwest` is that one.
use reqwest012 as reqwest;

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

// README snippet: begin
use futures::StreamExt;
use reqwest_eventsource::{Error, Event, EventSource};
use serde_json::Value;

/// Follows the stream at `url` as `token`, calling `handle(type, envelope)`
/// for each event, `reset` included. Returns once herald refuses the stream,
/// with its status: 401 (sign in again), 403 (the token may not read those
/// topics), or another (a 503 while its database is away: call again later);
/// `None` if the answer was no event stream.
async fn subscribe(
    url: &str,
    token: &str,
    mut handle: impl FnMut(&str, Value),
) -> Option<reqwest::StatusCode> {
    let request = reqwest::Client::new().get(url).bearer_auth(token);
    // It reconnects by itself after `retry:`, sending Last-Event-ID.
    let mut es = EventSource::new(request).expect("a GET can be sent again");
    while let Some(next) = es.next().await {
        match next {
            // The opening frame says what the stream is; it is no event.
            Ok(Event::Message(m)) if m.event != "stream" => {
                handle(
                    &m.event,
                    serde_json::from_str(&m.data).expect("herald sends JSON"),
                );
            }
            Ok(_) => {}
            // Any answer but 200 closes it for good, as in a browser.
            Err(Error::InvalidStatusCode(status, _)) => return Some(status),
            Err(_) => {} // a drop: it is reconnecting, unless it just closed
        }
    }
    None
}
// README snippet: end

/// The snippet, following `url` as `token` in a task of the test's own.
/// It writes `EVENT <type> <envelope>` for each event it handles and
/// `REFUSED <status>` when it returns, as the script harnesses print.
pub(super) fn spawn(url: String, token: String) -> (JoinHandle<()>, Arc<Mutex<String>>) {
    let out: Arc<Mutex<String>> = Arc::default();
    let task = tokio::spawn({
        let out = out.clone();
        async move {
            let status = subscribe(&url, &token, |kind, envelope| {
                out.lock()
                    .unwrap()
                    .push_str(&format!("EVENT {kind} {envelope}\n"));
            })
            .await;
            let status = status.map_or("none".to_owned(), |s| s.as_u16().to_string());
            out.lock().unwrap().push_str(&format!("REFUSED {status}\n"));
        }
    });
    (task, out)
}
