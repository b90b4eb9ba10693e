//! CORS for the origins listed with `--cors-origins`, with credentials
//! (cookies), so a page on another origin can use
//! `EventSource(url, {withCredentials: true})` and `fetch`. One decision
//! for every response, whichever writer sends it: the axum router's
//! answers through `http::Edge`, and the stream written straight to the
//! socket, both through [`Cors::headers`].
//!
//! With no origin listed there is no CORS at all: same-origin only. With a
//! list, every response says `Vary: Origin` (its headers depend on it, and
//! a cache must know), and only a listed origin gets
//! `Access-Control-Allow-Origin` (itself, never `*`, which credentials
//! forbid) with `Access-Control-Allow-Credentials: true`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);
/// Request headers a page may send cross-origin.
const ALLOWED_HEADERS: &str = "content-type, authorization, last-event-id, idempotency-key";
const ALLOWED_METHODS: &str = "GET, POST, PUT, DELETE";

/// The listed origins; cheap to clone.
#[derive(Clone, Default)]
pub struct Cors {
    origins: Arc<[HeaderValue]>,
}

impl Cors {
    /// # Panics
    /// Never for origins `config::parse_origin` accepted (visible ASCII).
    pub fn new(origins: &[String]) -> Self {
        Self {
            origins: origins
                .iter()
                .map(|o| HeaderValue::from_str(o).expect("an origin is a valid header value"))
                .collect(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    /// The listed origin equal to `origin`, if any.
    fn allowed(&self, origin: Option<&[u8]>) -> Option<&HeaderValue> {
        let origin = origin?;
        self.origins.iter().find(|o| o.as_bytes() == origin)
    }

    /// The CORS headers of a response (not a preflight) to a request whose
    /// `Origin` header is `origin`.
    pub fn headers(&self, origin: Option<&[u8]>) -> Vec<(HeaderName, HeaderValue)> {
        if !self.is_enabled() {
            return Vec::new();
        }
        let mut headers = vec![(header::VARY, HeaderValue::from_static("origin"))];
        if let Some(allowed) = self.allowed(origin) {
            headers.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed.clone()));
            headers.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        headers
    }

    /// The answer to a preflight (`OPTIONS` with
    /// `Access-Control-Request-Method`): `204` with what is allowed for a
    /// listed origin, `204` with nothing for another (the browser then
    /// refuses the request itself).
    pub fn preflight(&self, origin: Option<&[u8]>) -> Response {
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        for (name, value) in self.headers(origin) {
            h.append(name, value);
        }
        if self.allowed(origin).is_some() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOWED_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOWED_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(PREFLIGHT_MAX_AGE.as_secs()),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(headers: &[(HeaderName, HeaderValue)]) -> Vec<String> {
        headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn listed_origin_gets_itself_with_credentials() {
        let cors = Cors::new(&["https://app.example".to_owned()]);
        assert_eq!(
            names(&cors.headers(Some(b"https://app.example"))),
            [
                "vary: origin",
                "access-control-allow-origin: https://app.example",
                "access-control-allow-credentials: true"
            ]
        );
    }

    #[test]
    fn other_or_no_origin_gets_only_vary() {
        let cors = Cors::new(&["https://app.example".to_owned()]);
        assert_eq!(
            names(&cors.headers(Some(b"https://evil.example"))),
            ["vary: origin"]
        );
        assert_eq!(names(&cors.headers(None)), ["vary: origin"]);
    }

    #[test]
    fn no_list_means_no_cors_headers() {
        assert!(
            Cors::default()
                .headers(Some(b"https://app.example"))
                .is_empty()
        );
    }
}
