//! The live console at `/`: a page embedded in the binary (no build step)
//! that follows topics with herald.js, the browser client served at
//! `/herald.js` (`client.rs`), shows events as they arrive and publishes
//! test events. Its script is an ES module that imports `/herald.js`, so
//! every console tab of a browser shares herald.js's one stream. Script and
//! style are separate files so the page runs under a strict
//! Content-Security-Policy, which lets a same-origin module import.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");
const ICON: &str = include_str!("console/favicon.svg");

/// Only this origin's files and API; no inline script, no frames.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 4] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body)
}

pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

pub async fn icon() -> impl IntoResponse {
    asset("image/svg+xml", ICON)
}
